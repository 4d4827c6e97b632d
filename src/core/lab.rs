//! The lab Director behind `sipedge lab`: the smallest Director that lets two softphones
//! register through the edge and call each other, so a first run shows a call crossing the
//! edge. A registrar that honours Path (RFC 3327) and a stateless proxy (RFC 3261 §16.11)
//! that routes requests to registered users by lookup and record-routes dialogs through
//! itself. It is plainly a lab: bindings in memory, no authentication, and it trusts the
//! edge that connects to it (the loopback default's mutual TLS).
//!
//! Sans-IO: [`LabDirector::handle`] takes one message that arrived on connection `conn` (a
//! connection the edge's pool opened to the Director) and returns what to send, on which
//! connection. The shell owns the sockets (`shell::lab`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::sip::message::{Kind, Message, Method};
use super::sip::parse::{HeadLimits, Span};
use super::sip::reject;
use super::sip::splice::Splice;
use super::sip::HeaderName;

/// A connection to the Director, as the shell numbers them.
pub type ConnId = u64;

/// Registrations the lab keeps at most (a lab has a handful of users).
pub const MAX_BINDINGS: usize = 1000;
const LIMITS: HeadLimits = HeadLimits {
    max_headers: 128,
    max_line_bytes: 8192,
};
/// Registration lifetimes granted: within these, the client's ask (default an hour).
const EXPIRES: (u64, u64, u64) = (60, 3600, 3600);

/// Where a user is: the contact it registered, the Path the edge put in the REGISTER (the
/// route back to its connection), and the Director's connection it came on.
#[derive(Clone, Debug)]
struct Binding {
    contact: Vec<u8>,
    path: Vec<Vec<u8>>,
    conn: ConnId,
    until: Instant,
}

/// The lab Director's state: who is registered.
pub struct LabDirector {
    /// Our `host:port`: the Via and Record-Route we write, the Route we take as ours.
    me: String,
    bindings: HashMap<String, Binding>,
}

/// One message to send, on a connection.
pub type Send = (ConnId, Vec<u8>);

impl LabDirector {
    pub fn new(me: &str) -> LabDirector {
        LabDirector {
            me: me.to_ascii_lowercase(),
            bindings: HashMap::new(),
        }
    }

    /// Users registered now.
    pub fn registered(&self, now: Instant) -> Vec<String> {
        let mut users: Vec<String> = self
            .bindings
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(aor, _)| aor.clone())
            .collect();
        users.sort();
        users
    }

    /// One message from connection `conn`: what to send where. Whatever does not parse,
    /// or is not for the lab, is dropped (answered when it can be).
    pub fn handle(&mut self, conn: ConnId, raw: &[u8], now: Instant) -> Vec<Send> {
        let Ok(msg) = Message::parse(Bytes::copy_from_slice(raw), &LIMITS) else {
            return Vec::new();
        };
        match msg.kind {
            Kind::Response { .. } => self.response(&msg).into_iter().collect(),
            Kind::Request { method, .. } => {
                let answer = |status, reason| {
                    reject::response(&msg.raw, status, reason, b"")
                        .map(|a| vec![(conn, a)])
                        .unwrap_or_default()
                };
                match method {
                    Method::Register => self.register(conn, &msg, now),
                    // The edge's probes, and OPTIONS to the domain: the lab is up.
                    Method::Options if self.is_for_us(&msg) => answer(200, "OK"),
                    _ => self.proxy(conn, &msg, now),
                }
            }
        }
    }

    /// An OPTIONS for the Director itself (no user in the Request-URI, or a Route to us).
    fn is_for_us(&self, msg: &Message) -> bool {
        let uri = msg.request_uri().map(|u| msg.bytes(u)).unwrap_or_default();
        !uri.contains(&b'@') && msg.routes.is_empty()
    }

    fn register(&mut self, conn: ConnId, msg: &Message, now: Instant) -> Vec<Send> {
        let answer = |status: u16, reason: &str, extra: &[u8]| {
            reject::response(&msg.raw, status, reason, extra)
                .map(|a| vec![(conn, a)])
                .unwrap_or_default()
        };
        let Some(aor) = aor(msg.bytes(msg.to_uri)) else {
            return answer(400, "Bad To", b"");
        };
        let contact = header_values(msg, HeaderName::Contact).into_iter().next();
        let expires_header = msg
            .head
            .headers
            .iter()
            .find(|h| msg.bytes(h.name_span).eq_ignore_ascii_case(b"expires"))
            .and_then(|h| {
                std::str::from_utf8(msg.bytes(h.value))
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
        let Some(contact) = contact else {
            // A query: who is bound.
            let extra = self.bindings.get(&aor).map(|b| contact_line(b, now));
            return answer(200, "OK", extra.as_deref().unwrap_or_default());
        };
        let expires = param(contact, b"expires")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .or(expires_header)
            .unwrap_or(EXPIRES.2);
        if contact.trim_ascii() == b"*" || expires == 0 {
            self.bindings.remove(&aor);
            return answer(200, "OK", b"");
        }
        let Some(uri) = uri_of(contact) else {
            return answer(400, "Bad Contact", b"");
        };
        if !self.bindings.contains_key(&aor) && self.bindings.len() >= MAX_BINDINGS {
            self.bindings.retain(|_, b| b.until > now);
            if self.bindings.len() >= MAX_BINDINGS {
                return answer(503, "Lab Full", b"");
            }
        }
        let expires = expires.clamp(EXPIRES.0, EXPIRES.1);
        let binding = Binding {
            contact: uri.to_vec(),
            path: route_values(msg, HeaderName::Path),
            conn,
            until: now + Duration::from_secs(expires),
        };
        let extra = contact_line(&binding, now);
        self.bindings.insert(aor, binding);
        answer(200, "OK", &extra)
    }

    /// A request to proxy: in a dialog we record-routed (the top Route is ours), back the
    /// way the route set says; otherwise to the registered user the Request-URI names.
    fn proxy(&mut self, conn: ConnId, msg: &Message, now: Instant) -> Vec<Send> {
        let answer = |status: u16, reason: &str| {
            reject::response(&msg.raw, status, reason, b"")
                .map(|a| vec![(conn, a)])
                .unwrap_or_default()
        };
        let Some((mf_header, max_forwards)) = msg.max_forwards else {
            return answer(400, "Missing Max-Forwards");
        };
        if max_forwards == 0 {
            return answer(483, "Too Many Hops");
        }
        let Some(top_via) = msg.top_via() else {
            return Vec::new();
        };
        // Our Via, its branch derived from the one we received: a CANCEL and a non-2xx ACK
        // then carry the same branch as their INVITE did (§16.11), without state here. The
        // connection the request came on goes in it, for the responses.
        let branch = msg.bytes(top_via.branch.unwrap_or(top_via.value));
        let via = format!(
            "Via: SIP/2.0/TLS {};branch=z9hG4bKlab{:016x};lc={conn}\r\n",
            self.me,
            fnv(branch)
        );
        let first_via_line = msg
            .head
            .headers
            .get(top_via.header)
            .map_or(msg.head.start_line.end, |h| h.line.start);
        let mut splice = Splice::new();
        // First: the lines inserted below at the same place come after it.
        splice.insert(first_via_line, via.as_bytes());
        let ours = msg
            .routes
            .first()
            .is_some_and(|r| host_port(msg.bytes(r.uri)) == self.me.as_bytes());
        let to = if ours {
            // Loose routing (RFC 3261 §16.4): our entry comes off; the rest leads on, over
            // the connection it came on (the lab has one edge).
            if let Some(first) = msg.routes.first() {
                remove_route_entry(msg, first.header, first.value, &mut splice);
            }
            conn
        } else {
            let Some(target) = msg
                .request_uri()
                .and_then(|u| aor(msg.bytes(u)))
                .and_then(|aor| self.bindings.get(&aor).filter(|b| b.until > now))
                .cloned()
            else {
                let not_here = matches!(msg.method(), Some(Method::Ack));
                return if not_here {
                    Vec::new()
                } else {
                    answer(404, "Not Found")
                };
            };
            if let Some(uri) = msg.request_uri() {
                splice.replace(uri, &target.contact);
            }
            // The Path the user registered with is the route to its connection (after the
            // top Via line, so that the Vias stay together).
            let at = msg
                .head
                .headers
                .get(top_via.header)
                .map_or(msg.head.start_line.end, |h| h.line.end);
            let mut routes = Vec::new();
            for entry in &target.path {
                routes.extend_from_slice(b"Route: ");
                routes.extend_from_slice(entry);
                routes.extend_from_slice(b"\r\n");
            }
            if msg.method().is_some_and(Method::forms_dialog) && !has_to_tag(msg) {
                routes.extend_from_slice(
                    format!("Record-Route: <sip:{};transport=tls;lr>\r\n", self.me).as_bytes(),
                );
            }
            splice.insert(at, &routes);
            target.conn
        };
        if let Some(h) = msg.head.headers.get(mf_header) {
            splice.replace(h.value, (max_forwards - 1).to_string().as_bytes());
        }
        match splice.apply(&msg.raw, Some(msg.head.len)) {
            Some(out) => vec![(to, out)],
            None => Vec::new(),
        }
    }

    /// A response to a request we proxied: our Via comes off, and it goes back on the
    /// connection the request came on.
    fn response(&self, msg: &Message) -> Option<Send> {
        let via = msg.top_via()?;
        if msg.bytes(via.sent_by).to_ascii_lowercase() != self.me.as_bytes() {
            return None;
        }
        let value = msg.bytes(via.value);
        let conn = param(value, b"lc").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())?;
        let line = msg.head.headers.get(via.header)?;
        let mut splice = Splice::new();
        if msg.vias.iter().filter(|v| v.header == via.header).count() == 1 {
            splice.delete(line.line);
        } else {
            // Ours shares its line with others: the value and its comma go.
            let next = msg.vias.get(1)?;
            splice.delete(Span::new(via.value.start, next.value.start));
        }
        let out = splice.apply(&msg.raw, Some(msg.head.len))?;
        Some((conn, out))
    }
}

/// The `Contact` line of a 200 to a REGISTER: the binding and what is left of it.
fn contact_line(b: &Binding, now: Instant) -> Vec<u8> {
    let left = b.until.saturating_duration_since(now).as_secs();
    let mut line = b"Contact: <".to_vec();
    line.extend_from_slice(&b.contact);
    line.extend_from_slice(format!(">;expires={left}\r\n").as_bytes());
    line
}

/// `user@host` of a SIP URI (lower-cased host; the user as written), without scheme,
/// port, parameters or headers.
fn aor(uri: &[u8]) -> Option<String> {
    let uri = uri.trim_ascii();
    let uri = uri.strip_prefix(b"<").unwrap_or(uri);
    let rest = uri
        .strip_prefix(b"sip:")
        .or_else(|| uri.strip_prefix(b"sips:"))?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b';' | b'?' | b'>'))
        .unwrap_or(rest.len());
    let rest = rest.get(..end)?;
    let at = rest.iter().position(|&b| b == b'@')?;
    let (user, host) = (rest.get(..at)?, rest.get(at + 1..)?);
    // Without the port: an IPv6 reference keeps its brackets.
    let host = if host.starts_with(b"[") {
        let close = host.iter().position(|&b| b == b']')?;
        host.get(..=close)?
    } else {
        let end = host.iter().position(|&b| b == b':').unwrap_or(host.len());
        host.get(..end)?
    };
    if user.is_empty() || host.is_empty() {
        return None;
    }
    let user = std::str::from_utf8(user).ok()?;
    let host = std::str::from_utf8(host).ok()?.to_ascii_lowercase();
    Some(format!("{user}@{host}"))
}

/// `host:port` of a SIP URI (lower-cased), as the lab names itself.
fn host_port(uri: &[u8]) -> Vec<u8> {
    let rest = uri
        .strip_prefix(b"sip:")
        .or_else(|| uri.strip_prefix(b"sips:"))
        .unwrap_or(uri);
    let rest = match rest.iter().position(|&b| b == b'@') {
        Some(at) => rest.get(at + 1..).unwrap_or_default(),
        None => rest,
    };
    let end = rest
        .iter()
        .position(|&b| matches!(b, b';' | b'?' | b'>'))
        .unwrap_or(rest.len());
    rest.get(..end).unwrap_or_default().to_ascii_lowercase()
}

/// The URI of a name-addr or addr-spec (`<uri>;params` or `uri;params`).
fn uri_of(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    if let Some(open) = value.iter().position(|&b| b == b'<') {
        let rest = value.get(open + 1..)?;
        let close = rest.iter().position(|&b| b == b'>')?;
        return rest.get(..close);
    }
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    value.get(..end)
}

/// A header parameter's value (after the URI's closing bracket, if any).
fn param<'a>(value: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let after = match value.iter().position(|&b| b == b'>') {
        Some(close) => value.get(close + 1..)?,
        None => value,
    };
    after.split(|&b| b == b';').skip(1).find_map(|p| {
        let p = p.trim_ascii();
        let (k, v) = match p.iter().position(|&b| b == b'=') {
            Some(eq) => (p.get(..eq)?, p.get(eq + 1..)?),
            None => (p, &b""[..]),
        };
        k.trim_ascii()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim_ascii())
    })
}

fn has_to_tag(msg: &Message) -> bool {
    msg.to_tag.is_some()
}

/// The values of every header `name` (whole values, not split at commas).
fn header_values(msg: &Message, name: HeaderName) -> Vec<&[u8]> {
    msg.head
        .headers
        .iter()
        .filter(|h| h.name == name)
        .map(|h| msg.bytes(h.value))
        .collect()
}

/// The entries of every Route-like header `name` (`<uri;lr>` each), split at commas.
fn route_values(msg: &Message, name: HeaderName) -> Vec<Vec<u8>> {
    header_values(msg, name)
        .into_iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|e| e.trim_ascii().to_vec())
        .filter(|e| !e.is_empty())
        .collect()
}

/// Removes one Route entry: its whole line when it is the line's only entry, else the
/// entry and the comma after it.
fn remove_route_entry(msg: &Message, header: usize, value: Span, splice: &mut Splice) {
    let Some(h) = msg.head.headers.get(header) else {
        return;
    };
    let others = msg.routes.iter().filter(|r| r.header == header).count();
    if others <= 1 {
        splice.delete(h.line);
        return;
    }
    // The entry, then the comma and blanks up to the next entry.
    let raw = &msg.raw;
    let mut end = value.end;
    while raw
        .get(end)
        .is_some_and(|&b| b == b',' || b == b' ' || b == b'\t')
    {
        end += 1;
    }
    splice.delete(Span::new(value.start, end));
}

/// FNV-1a, 64 bits: a branch derived from another (not a secret).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests;
