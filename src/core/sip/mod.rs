//! SIP for the Access Edge: stream framing, strict validation, proxy edits by splicing the
//! original bytes, flow tokens, and the next-hop pool's health and load bookkeeping.
//!
//! One connection is a [`session::Session`]: [`frame::Framer`] finds a complete message on
//! the stream, [`message::Message::parse`] tokenizes and validates it, the session admits
//! it (rates, bans, overload, drain, call limits), [`proxy::Proxy::handle`] decides (forward
//! where, with which edits, or reject how), [`splice`] writes the bytes, and [`calls`]
//! counts the calls crossing the edge.

pub mod calls;
pub mod federation;
pub mod frame;
pub mod health;
pub mod message;
pub mod outstanding;
pub mod parse;
pub mod pool_link;
pub mod proxy;
pub mod reject;
pub mod session;
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
    /// Another header that only a trust domain may set ([`TRUST_DOMAIN_HEADERS`]): stripped
    /// from anything arriving from outside.
    TrustDomain,
    Other,
}

/// Headers that carry an identity, a charge or a network assertion which only a trusted
/// hop may set, beyond `P-Asserted-Identity` and `ms-edge-proxy-message-trust` (which have
/// names of their own). From outside they are removed, whatever their case; operators add
/// names with `firewall.strip_headers`.
pub const TRUST_DOMAIN_HEADERS: &[&str] = &[
    // RFC 3325: the identity a UA would like asserted is a trust-domain matter too.
    "p-preferred-identity",
    // draft-ietf-sip-privacy-04, still sent by Cisco and others: `screen=yes` asserts.
    "remote-party-id",
    // RFC 7315 (3GPP): network and charging assertions.
    "p-associated-uri",
    "p-called-party-id",
    "p-visited-network-id",
    "p-access-network-info",
    "p-charging-function-addresses",
    "p-charging-vector",
    // RFC 5502, RFC 6050: whom the request is served for, which service it asserts.
    "p-served-user",
    "p-asserted-service",
    "p-preferred-service",
    // RFC 3313, RFC 5002, RFC 4457, RFC 5009, RFC 7316, RFC 8496.
    "p-media-authorization",
    "p-profile-key",
    "p-user-database",
    "p-early-media",
    "p-private-network-indication",
    "p-charge-info",
    // RFC 5503 (PacketCable): billing and lawful interception.
    "p-dcs-trace-party-id",
    "p-dcs-osps",
    "p-dcs-billing-info",
    "p-dcs-laes",
    "p-dcs-redirect",
    // Microsoft (MS-SIPRE, MS-SIPAE): what the Lync/Skype edge and pool assert.
    "ms-asserted-verification-level",
    "ms-split-domain-info",
    "ms-user-logon-data",
    "ms-trunking-peer",
];

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
        if let Some(&(_, h)) = LONG
            .iter()
            .find(|(long, _)| long.eq_ignore_ascii_case(name))
        {
            return h;
        }
        // Only names starting with `p`, `m` or `r` can be trust-domain headers: most headers
        // are ruled out by their first byte.
        match name.first().map(u8::to_ascii_lowercase) {
            Some(b'p' | b'm' | b'r')
                if TRUST_DOMAIN_HEADERS
                    .iter()
                    .any(|t| t.as_bytes().eq_ignore_ascii_case(name)) =>
            {
                HeaderName::TrustDomain
            }
            _ => HeaderName::Other,
        }
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
            HeaderName::TrustDomain => "trust-domain header",
            HeaderName::Other => "header",
        }
    }

    /// Headers that carry trust: stripped from anything arriving from outside.
    pub fn carries_trust(self) -> bool {
        matches!(
            self,
            HeaderName::MsEdgeProxyMessageTrust
                | HeaderName::PAssertedIdentity
                | HeaderName::TrustDomain
        )
    }
}
