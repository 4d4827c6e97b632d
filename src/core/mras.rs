//! The A/V authentication service's message format (MS-AVEDGEA, as Lync/Skype clients and
//! SIPE speak it): a `credentialsRequest` inside a `request` element in a SIP SERVICE body
//! (`application/msrtc-media-relay-auth+xml`), answered by a `credentialsResponse` with the
//! credentials and the media relay list. Sans-IO: bytes in, a parsed request or the
//! response body out. Parsing is strict (one root, the mrasp namespace, no DTD, bounded
//! sizes); anything else is a [`MrasError`] the caller answers with 400.

use std::fmt::Write as _;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// The protocol's XML namespace.
pub const NAMESPACE: &str = "http://schemas.microsoft.com/2006/09/sip/mrasp";
/// The SIP Content-Type of requests and responses.
pub const CONTENT_TYPE: &str = "application/msrtc-media-relay-auth+xml";
/// Largest body parsed (a real request is ~400 bytes).
pub const MAX_BODY: usize = 16 * 1024;
const MAX_TEXT: usize = 1024;
const MAX_DEPTH: usize = 8;

/// Where the requesting client is (the relay list is chosen by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    Internet,
    Intranet,
}

/// A parsed credentials request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialsRequest {
    /// `request/@requestID`.
    pub request_id: String,
    /// `request/@from` and `@to` (echoed swapped in the response).
    pub from: String,
    pub to: String,
    /// `credentialsRequest/@credentialsRequestID`.
    pub credentials_request_id: String,
    /// The user the credential is for (a SIP URI).
    pub identity: String,
    pub location: Option<Location>,
    /// Requested lifetime in minutes, if given.
    pub duration_minutes: Option<u64>,
}

/// Why a request body is refused (400 with this as the reason).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MrasError {
    #[error("body too large")]
    TooLarge,
    #[error("not well-formed XML: {0}")]
    Xml(String),
    #[error("DTDs and processing instructions are not accepted")]
    Dtd,
    #[error("root element must be <request xmlns=\"{NAMESPACE}\">")]
    Root,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Parses a SERVICE body.
pub fn parse_request(body: &[u8]) -> Result<CredentialsRequest, MrasError> {
    if body.len() > MAX_BODY {
        return Err(MrasError::TooLarge);
    }
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut req = CredentialsRequest::default();
    // The path of open elements (local names).
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut text = String::new();
    let mut seen_root = false;
    let mut seen_credentials_request = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| MrasError::Xml(e.to_string()))?;
        match event {
            Event::Eof => break,
            Event::DocType(_) | Event::PI(_) => return Err(MrasError::Dtd),
            Event::Decl(_) | Event::Comment(_) => {}
            Event::Start(e) | Event::Empty(e) if path.len() >= MAX_DEPTH => {
                let _ = e;
                return Err(MrasError::Invalid("nesting depth"));
            }
            ev @ (Event::Start(_) | Event::Empty(_)) => {
                let empty = matches!(ev, Event::Empty(_));
                let e = match ev {
                    Event::Start(e) | Event::Empty(e) => e,
                    _ => unreachable!(),
                };
                let name = e.local_name().as_ref().to_vec();
                match (path.len(), name.as_slice()) {
                    (0, b"request") if !seen_root => {
                        seen_root = true;
                        if attr(&e, b"xmlns")?.as_deref() != Some(NAMESPACE) {
                            return Err(MrasError::Root);
                        }
                        req.request_id = attr(&e, b"requestID")?
                            .ok_or(MrasError::Missing("request/@requestID"))?;
                        req.from = attr(&e, b"from")?.unwrap_or_default();
                        req.to = attr(&e, b"to")?.unwrap_or_default();
                    }
                    (0, _) => return Err(MrasError::Root),
                    (1, b"credentialsRequest") if !seen_credentials_request => {
                        seen_credentials_request = true;
                        req.credentials_request_id = attr(&e, b"credentialsRequestID")?.ok_or(
                            MrasError::Missing("credentialsRequest/@credentialsRequestID"),
                        )?;
                    }
                    (1, b"credentialsRequest") => {
                        return Err(MrasError::Invalid("two credentialsRequest elements"))
                    }
                    _ => {}
                }
                if !empty {
                    path.push(name);
                    text.clear();
                }
            }
            Event::Text(t) => {
                let t = t.decode().map_err(|e| MrasError::Xml(e.to_string()))?;
                push_text(&mut text, &t)?;
            }
            Event::CData(t) => {
                let t = t.decode().map_err(|e| MrasError::Xml(e.to_string()))?;
                push_text(&mut text, &t)?;
            }
            Event::GeneralRef(r) => {
                let name = r.decode().map_err(|e| MrasError::Xml(e.to_string()))?;
                let c = resolve_entity(&name).ok_or(MrasError::Invalid("entity reference"))?;
                push_text(&mut text, c.encode_utf8(&mut [0u8; 4]))?;
            }
            Event::End(_) => {
                let in_request =
                    path.len() == 3 && path.get(1).is_some_and(|p| p == b"credentialsRequest");
                if in_request {
                    let value = std::mem::take(&mut text);
                    match path.last().map(Vec::as_slice) {
                        Some(b"identity") => req.identity = value,
                        Some(b"location") => {
                            req.location = Some(match value.as_str() {
                                "internet" => Location::Internet,
                                "intranet" => Location::Intranet,
                                _ => {
                                    return Err(MrasError::Invalid(
                                        "location (internet or intranet)",
                                    ))
                                }
                            })
                        }
                        Some(b"duration") => {
                            let minutes = value
                                .parse::<u64>()
                                .ok()
                                .filter(|&m| m > 0)
                                .ok_or(MrasError::Invalid("duration (positive minutes)"))?;
                            req.duration_minutes = Some(minutes);
                        }
                        _ => {}
                    }
                }
                path.pop();
                text.clear();
            }
        }
    }
    if !seen_root || !path.is_empty() {
        return Err(MrasError::Root);
    }
    if !seen_credentials_request {
        return Err(MrasError::Missing("credentialsRequest"));
    }
    if req.identity.is_empty() {
        return Err(MrasError::Missing("credentialsRequest/identity"));
    }
    if !is_printable(&req.identity)
        || !is_printable(&req.request_id)
        || !is_printable(&req.credentials_request_id)
    {
        return Err(MrasError::Invalid("identity or ids (printable, no spaces)"));
    }
    Ok(req)
}

fn push_text(text: &mut String, more: &str) -> Result<(), MrasError> {
    if text.len() + more.len() > MAX_TEXT {
        return Err(MrasError::TooLarge);
    }
    text.push_str(more);
    Ok(())
}

fn is_printable(s: &str) -> bool {
    s.len() <= 256 && s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

fn resolve_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix('x') {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

fn attr(e: &BytesStart<'_>, name: &[u8]) -> Result<Option<String>, MrasError> {
    match e.try_get_attribute(name) {
        Ok(Some(a)) => {
            let v = a
                .unescape_value()
                .map_err(|e| MrasError::Xml(e.to_string()))?;
            if v.len() > MAX_TEXT {
                return Err(MrasError::TooLarge);
            }
            Ok(Some(v.into_owned()))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(MrasError::Xml(e.to_string())),
    }
}

/// A relay as advertised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaRelay<'a> {
    pub location: Location,
    pub host: &'a str,
    pub udp_port: u16,
    pub tcp_port: u16,
}

/// The `response` body granting `username`/`password` for `duration_minutes`.
pub fn response_body(
    req: &CredentialsRequest,
    username: &str,
    password: &str,
    duration_minutes: u64,
    relays: &[MediaRelay<'_>],
) -> String {
    let mut out = String::with_capacity(1024);
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n\
         <response xmlns=\"{NAMESPACE}\" requestID=\"{}\" version=\"1.0\" serverVersion=\"2.0\" to=\"{}\" from=\"{}\" reasonPhrase=\"OK\">\
         <credentialsResponse credentialsRequestID=\"{}\">\
         <credentials><username>{}</username><password>{}</password><duration>{duration_minutes}</duration></credentials>\
         <mediaRelayList>",
        escape(&req.request_id),
        escape(&req.from),
        escape(&req.to),
        escape(&req.credentials_request_id),
        escape(username),
        escape(password),
    );
    for r in relays {
        let location = match r.location {
            Location::Internet => "internet",
            Location::Intranet => "intranet",
        };
        let _ = write!(
            out,
            "<mediaRelay><location>{location}</location><hostName>{}</hostName><udpPort>{}</udpPort><tcpPort>{}</tcpPort></mediaRelay>",
            escape(r.host),
            r.udp_port,
            r.tcp_port
        );
    }
    out.push_str("</mediaRelayList></credentialsResponse></response>");
    out
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What SIPE (and, per MS-AVEDGEA, Lync) sends.
    pub(crate) const LYNC_REQUEST: &str = "<request requestID=\"1390413\" from=\"sip:alice@corp.example\" version=\"1.0\" \
        to=\"sip:edgepool.corp.example@corp.example;gruu;opaque=srvr:MRAS:8mFkTyb9wVWwzLpXWNlNgAAA\" \
        xmlns=\"http://schemas.microsoft.com/2006/09/sip/mrasp\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
        <credentialsRequest credentialsRequestID=\"1390413\"><identity>sip:alice@corp.example</identity>\
        <location>internet</location><duration>480</duration></credentialsRequest></request>";

    #[test]
    fn parses_the_lync_request() {
        let r = parse_request(LYNC_REQUEST.as_bytes()).unwrap();
        assert_eq!(r.request_id, "1390413");
        assert_eq!(r.credentials_request_id, "1390413");
        assert_eq!(r.identity, "sip:alice@corp.example");
        assert_eq!(r.location, Some(Location::Internet));
        assert_eq!(r.duration_minutes, Some(480));
        assert_eq!(r.from, "sip:alice@corp.example");
        assert!(r.to.contains("srvr:MRAS"));
    }

    #[test]
    fn optional_parts_and_prefixes() {
        let body = "<?xml version=\"1.0\"?><m:request xmlns=\"http://schemas.microsoft.com/2006/09/sip/mrasp\" requestID=\"7\">\
            <m:credentialsRequest credentialsRequestID=\"8\"><m:identity>sip:bob@corp.example</m:identity></m:credentialsRequest></m:request>";
        let r = parse_request(body.as_bytes()).unwrap();
        assert_eq!((r.location, r.duration_minutes), (None, None));
        assert_eq!(r.identity, "sip:bob@corp.example");
    }

    #[test]
    fn malformed_requests_have_reasons() {
        let ok = LYNC_REQUEST;
        let cases: Vec<(String, &str)> = vec![
            ("<request".into(), "not well-formed"),
            (ok.replace("http://schemas.microsoft.com/2006/09/sip/mrasp", "urn:other"), "root element"),
            (ok.replace("<request ", "<response "), "root element"),
            (ok.replace("<identity>sip:alice@corp.example</identity>", ""), "missing credentialsRequest/identity"),
            (ok.replace("internet", "mars"), "location"),
            (ok.replace("480", "-5"), "duration"),
            (ok.replace("480", "0"), "duration"),
            (ok.replace(" credentialsRequestID=\"1390413\"", ""), "credentialsRequestID"),
            (format!("<!DOCTYPE x [<!ENTITY a \"b\">]>{ok}"), "DTD"),
            (ok.replace("alice@corp", "&xxe;@corp"), "entity"),
            (ok.replace("</request>", "</request><request/>"), "root element"),
            (format!("{ok}{}", " ".repeat(MAX_BODY)), "too large"),
            (ok.replace("sip:alice@corp.example</identity>", "sip:alice corp</identity>"), "printable"),
            (ok.replace("</credentialsRequest>", "</credentialsRequest><credentialsRequest credentialsRequestID=\"2\"><identity>x</identity></credentialsRequest>"), "two"),
        ];
        for (body, want) in cases {
            let err = parse_request(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: got {err} for {body}");
        }
    }

    #[test]
    fn response_structure_is_what_clients_read() {
        let r = parse_request(LYNC_REQUEST.as_bytes()).unwrap();
        let relays = [MediaRelay {
            location: Location::Internet,
            host: "av.corp.example",
            udp_port: 3478,
            tcp_port: 443,
        }];
        let body = response_body(
            &r,
            "1800028800:sip:alice@corp.example",
            "a+b/c=",
            480,
            &relays,
        );
        assert_eq!(
            body,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<response xmlns=\"http://schemas.microsoft.com/2006/09/sip/mrasp\" \
             requestID=\"1390413\" version=\"1.0\" serverVersion=\"2.0\" to=\"sip:alice@corp.example\" \
             from=\"sip:edgepool.corp.example@corp.example;gruu;opaque=srvr:MRAS:8mFkTyb9wVWwzLpXWNlNgAAA\" reasonPhrase=\"OK\">\
             <credentialsResponse credentialsRequestID=\"1390413\"><credentials><username>1800028800:sip:alice@corp.example</username>\
             <password>a+b/c=</password><duration>480</duration></credentials><mediaRelayList><mediaRelay><location>internet</location>\
             <hostName>av.corp.example</hostName><udpPort>3478</udpPort><tcpPort>443</tcpPort></mediaRelay></mediaRelayList>\
             </credentialsResponse></response>"
        );
        // It parses back as XML with quick-xml (well-formed), whatever the values.
        let weird = CredentialsRequest {
            request_id: "<&>\"'".into(),
            ..r
        };
        let body = response_body(&weird, "u", "p", 1, &relays);
        let mut reader = Reader::from_str(&body);
        while !matches!(reader.read_event().unwrap(), Event::Eof) {}
    }
}
