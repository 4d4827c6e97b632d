//! The outside clients: what they learn from everything the edge sends them (tokens, Vias,
//! Call-IDs, tags), and the requests and responses they write with it, honest or not.

use super::choices::{one, Choices};
use super::{header_name, World};

impl World {
    pub(super) fn learn(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let mut vias = Vec::new();
        for line in text.split("\r\n") {
            if line.starts_with("Via:") {
                vias.push(line.to_string());
            }
            if let Some(id) = line.strip_prefix("Call-ID: ") {
                push_bounded(&mut self.call_ids, id.to_string());
            }
            if let Some(at) = line.find(";tag=") {
                let tag: String = line[at + 5..]
                    .chars()
                    .take_while(|c| !matches!(c, ';' | '>' | ' ' | ','))
                    .collect();
                push_bounded(&mut self.tags, tag);
            }
        }
        if !vias.is_empty() {
            if self.vias.len() >= 16 {
                self.vias.remove(0);
            }
            self.vias.push(vias);
        }
        for t in tokens_in(text.as_bytes()) {
            push_bounded(&mut self.tokens, t);
        }
    }

    /// An honest new dialog: an INVITE or SUBSCRIBE to a served domain, remembered.
    pub(super) fn new_dialog(&mut self, c: &mut dyn Choices, conn: u64) -> String {
        let method = one(c, &["INVITE", "SUBSCRIBE"]);
        let call_id = self.fresh("dlg");
        let tag = self.fresh("tag");
        let mine = self.own_dialogs.entry(conn).or_default();
        if mine.len() >= 8 {
            mine.remove(0);
        }
        mine.push((call_id.clone(), tag.clone()));
        let branch = self.fresh("z9hG4bKnd");
        format!(
            "{method} sip:bob@sipedge.test SIP/2.0\r\n\
             Via: SIP/2.0/TLS 192.168.1.{conn}:5061;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice{conn}@sipedge.test>;tag={tag}\r\n\
             To: <sip:bob@sipedge.test>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 {method}\r\n\
             Contact: <sip:alice@192.168.1.{conn}:5061;transport=tls>\r\n\
             Content-Length: 0\r\n\r\n"
        )
    }

    /// A request in one of the client's own dialogs, with a token it saw (mostly its own),
    /// to a target of its choosing: the out-of-dialog rules do not apply when the dialog is
    /// proven, so this is where a proven dialog reaches anywhere.
    pub(super) fn in_own_dialog(&mut self, c: &mut dyn Choices, conn: u64) -> Option<String> {
        let mine = self.own_dialogs.get(&conn)?.clone();
        if mine.is_empty() {
            return None;
        }
        let (call_id, tag) = one(c, &mine);
        let own = self.own_tokens.get(&conn).cloned().unwrap_or_default();
        let token = if c.pick(3) > 0 && !own.is_empty() {
            one(c, &own)
        } else {
            Self::any(c, &self.tokens, "o0000000000000001deadbeefdeadbeefdead").to_string()
        };
        let ruri = one(
            c,
            &[
                "sip:bob@10.0.0.30:5061;transport=tls",
                "sip:+19005551234@evil.example",
                "sip:127.0.0.2:9095",
                "sip:bob@sipedge.test",
            ],
        );
        let route = match c.pick(3) {
            0 => format!("Route: <sip:{token}@edge.sipedge.test:5061;transport=tls;lr>, <sip:{token}@127.0.0.2:5061;transport=tls;lr>\r\n"),
            1 => format!("Route: <sip:{token}@edge.sipedge.test:5061;transport=tls;lr>, <sip:fe1.sipedge.test;lr>\r\n"),
            _ => format!("Route: <sip:{token}@edge.sipedge.test:5061;transport=tls;lr>\r\n"),
        };
        let method = one(c, &["BYE", "INFO", "ACK", "UPDATE", "REFER"]);
        let to_tag = Self::any(c, &self.tags, "t0").to_string();
        let branch = self.fresh("z9hG4bKid");
        Some(format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/TLS 192.168.1.{conn}:5061;branch={branch}\r\n\
             {route}Max-Forwards: 70\r\n\
             From: <sip:alice{conn}@sipedge.test>;tag={tag}\r\n\
             To: <sip:bob@sipedge.test>;tag={to_tag}\r\n\
             Call-ID: {call_id}\r\nCSeq: 2 {method}\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    /// The client answers a request the Director sent it, as a UA does (or with another
    /// Call-ID, which must not pass).
    pub(super) fn honest_response(&mut self, c: &mut dyn Choices, conn: u64) -> Option<String> {
        let inbox = self.inbox.get(&conn)?;
        if inbox.is_empty() {
            return None;
        }
        let req = one(c, inbox);
        let head = req.split("\r\n\r\n").next().unwrap_or_default();
        let status = one(c, &["200 OK", "180 Ringing", "481 Call Does Not Exist"]);
        let mut out = format!("SIP/2.0 {status}\r\n");
        for line in head.split("\r\n").skip(1) {
            match header_name(line).as_str() {
                "via" | "from" | "cseq" | "record-route" => {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
                "call-id" => {
                    if c.pick(5) == 0 {
                        out.push_str("Call-ID: tampered\r\n");
                    } else {
                        out.push_str(line);
                        out.push_str("\r\n");
                    }
                }
                "to" => {
                    out.push_str(line);
                    if !line.contains("tag=") {
                        out.push_str(";tag=ua");
                    }
                    out.push_str("\r\n");
                }
                _ => {}
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        Some(out)
    }

    fn any<'a>(c: &mut dyn Choices, list: &'a [String], default: &'a str) -> &'a str {
        if list.is_empty() {
            default
        } else {
            list.get(c.pick(list.len())).map_or(default, String::as_str)
        }
    }

    /// A request an outsider writes with what it knows.
    pub(super) fn client_request(&mut self, c: &mut dyn Choices, conn: u64) -> String {
        const METHODS: [&str; 10] = [
            "INVITE",
            "BYE",
            "OPTIONS",
            "MESSAGE",
            "INFO",
            "SERVICE",
            "REGISTER",
            "ACK",
            "CANCEL",
            "SUBSCRIBE",
        ];
        let method = one(c, &METHODS);
        let ruri = match c.pick(10) {
            0 | 1 => "sip:bob@sipedge.test".to_string(),
            2 => "sip:+19005551234@evil.example".into(),
            3 => "sip:127.0.0.2:9095".into(),
            4 => "sip:edge.sipedge.test:5061".into(),
            5 => "sip:bob@sipedge.test;maddr=198.51.100.5".into(),
            6 => "sip:edge.sipedge.test:9095".into(),
            7 => "sip:bob@10.0.0.30:5061;transport=tls".into(),
            8 => "sip:bob@sipedge.test:9095".into(),
            _ => "tel:+19005551234".into(),
        };
        let call_id = match c.pick(3) {
            0 => self.fresh("call"),
            _ => Self::any(c, &self.call_ids, "c0").to_string(),
        };
        let from_tag = match c.pick(3) {
            0 => self.fresh("f"),
            _ => Self::any(c, &self.tags, "t0").to_string(),
        };
        let to = match c.pick(3) {
            0 => String::new(),
            _ => format!(";tag={}", Self::any(c, &self.tags, "t0")),
        };
        let token = Self::any(c, &self.tokens, "o0000000000000001deadbeefdeadbeefdead").to_string();
        let route = match c.pick(8) {
            0 | 1 => String::new(),
            2 => format!("Route: <sip:{token}@edge.sipedge.test:5061;transport=tls;lr>, <sip:{token}@127.0.0.2:5061;transport=tls;lr>\r\n"),
            3 => format!("Route: <sip:{token}@edge.sipedge.test:5061;transport=tls;lr>, <sip:fe1.sipedge.test;lr>\r\n"),
            4 => format!("Route: <sip:{token}@edge.sipedge.test:5061;lr>, <sip:127.0.0.2:9095;lr>\r\n"),
            5 => "Route: <sip:198.51.100.5;lr>\r\n".into(),
            6 => "Route: <sip:edge.sipedge.test;lr;maddr=10.0.0.9>\r\n".into(),
            _ => "Route: <sip:edge.sipedge.test:5061;lr>\r\n".into(),
        };
        let extra = match c.pick(6) {
            0 => "Content-Type: application/msrtc-media-relay-auth+xml\r\n",
            1 => "P-Asserted-Identity: <sip:ceo@sipedge.test>\r\n",
            _ => "",
        };
        let branch = self.fresh("z9hG4bKcl");
        format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/TLS 192.168.1.{conn}:5061;branch={branch};rport\r\n\
             {route}Max-Forwards: 70\r\n\
             From: <sip:alice{conn}@sipedge.test>;tag={from_tag}\r\n\
             To: <sip:bob@sipedge.test>{to}\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 {method}\r\n\
             Contact: <sip:alice@192.168.1.{conn}:5061;transport=tls>\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        )
    }

    /// A response an outsider writes: the Vias of something it saw (its own or learned),
    /// with a Call-ID and tags of its choosing.
    pub(super) fn client_response(&mut self, c: &mut dyn Choices, _conn: u64) -> Option<String> {
        if self.vias.is_empty() {
            return None;
        }
        let vias = one(c, &self.vias);
        let call_id = Self::any(c, &self.call_ids, "c0").to_string();
        let tag = Self::any(c, &self.tags, "t0").to_string();
        let status = one(c, &["100 Trying", "180 Ringing", "200 OK", "486 Busy Here"]);
        let method = one(c, &["INVITE", "MESSAGE", "BYE", "OPTIONS"]);
        Some(format!(
            "SIP/2.0 {status}\r\n{}\r\nFrom: <sip:bob@sipedge.test>;tag={tag}\r\n\
             To: <sip:alice@sipedge.test>;tag=x{tag}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n\
             Content-Length: 0\r\n\r\n",
            vias.join("\r\n")
        ))
    }
}

/// Tokens in text: a kind letter and 36 hex digits, wherever they appear.
pub(super) fn tokens_in(b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 37 <= b.len() {
        let kind = b
            .get(i)
            .is_some_and(|k| matches!(k, b'v' | b'p' | b'o' | b'i'));
        let hex = b
            .get(i + 1..i + 37)
            .is_some_and(|h| h.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        if kind && hex {
            out.push(String::from_utf8_lossy(b.get(i..i + 37).unwrap_or_default()).to_string());
            i += 37;
        } else {
            i += 1;
        }
    }
    out
}

pub(super) fn push_bounded(list: &mut Vec<String>, item: String) {
    if item.is_empty() || item.len() > 200 || list.contains(&item) {
        return;
    }
    if list.len() >= 64 {
        list.remove(0);
    }
    list.push(item);
}
