//! The honest Director inside: it answers the requests that reach it, remembers the
//! dialogs its 2xx answers form and the Paths of registrations, and sends requests out in
//! them.

use super::choices::{one, Choices};
use super::{header_name, DirectorDialog, World};

impl World {
    /// The honest Director answers a pending request.
    pub(super) fn director_answers(&mut self, c: &mut dyn Choices) {
        if self.pending.is_empty() {
            return;
        }
        let req = self.pending.remove(c.pick(self.pending.len())).text;
        let status = one(
            c,
            &["200 OK", "180 Ringing", "486 Busy Here", "401 Unauthorized"],
        );
        let uas_tag = self.fresh("uas");
        let mut out = format!("SIP/2.0 {status}\r\n");
        let head = req.split("\r\n\r\n").next().unwrap_or_default();
        let mut rr = Vec::new();
        let (mut call_id, mut from_tag, mut conn) = (String::new(), String::new(), 0u64);
        for line in head.split("\r\n").skip(1) {
            match header_name(line).as_str() {
                "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
                "record-route" => {
                    rr.push(
                        line.split_once(':')
                            .map(|(_, v)| v.trim().to_string())
                            .unwrap_or_default(),
                    );
                    out.push_str(line);
                    out.push_str("\r\n");
                }
                "to" | "t" => {
                    out.push_str(line);
                    if !line.contains("tag=") {
                        out.push_str(&format!(";tag={uas_tag}"));
                    }
                    out.push_str("\r\n");
                }
                _ => {}
            }
            if let Some(v) = line.strip_prefix("Call-ID: ") {
                call_id = v.to_string();
            }
            if line.starts_with("From:") {
                if let Some(at) = line.find(";tag=") {
                    from_tag = line[at + 5..].to_string();
                }
                if let Some(at) = line.find("alice") {
                    conn = line[at + 5..]
                        .chars()
                        .next()
                        .and_then(|d| d.to_digit(10))
                        .unwrap_or(0)
                        .into();
                }
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        // A 2xx to a dialog-forming request: the Director may send in that dialog later.
        if status.starts_with("200") && !rr.is_empty() && conn > 0 {
            let route = rr
                .iter()
                .flat_map(|v| v.split(", ").map(str::to_string).collect::<Vec<_>>())
                .collect();
            self.director_dialogs.push(DirectorDialog {
                call_id,
                local_tag: uas_tag,
                remote_tag: from_tag,
                route,
            });
        }
        if req.starts_with("REGISTER ") && status.starts_with("200") && conn > 0 {
            if let Some(path) = head.split("\r\n").find_map(|l| l.strip_prefix("Path: ")) {
                self.paths.insert(conn, path.to_string());
            }
        }
        self.on_director_bytes(out.as_bytes());
    }

    /// The honest Director sends a request out: in a dialog it holds, or to a registered
    /// contact by its Path.
    pub(super) fn director_request(&mut self, c: &mut dyn Choices) {
        let n = self.fresh("d");
        let msg = if !self.director_dialogs.is_empty() && c.pick(2) == 0 {
            let d = one(c, &self.director_dialogs);
            let method = one(c, &["BYE", "INFO", "UPDATE"]);
            format!(
                "{method} sip:alice@192.168.1.1:5061;transport=tls SIP/2.0\r\n\
                 Via: SIP/2.0/TLS 10.0.0.30:5061;branch=z9hG4bK{n}\r\n\
                 Route: {}\r\nMax-Forwards: 70\r\n\
                 From: <sip:bob@sipedge.test>;tag={}\r\nTo: <sip:alice@sipedge.test>;tag={}\r\n\
                 Call-ID: {}\r\nCSeq: 7 {method}\r\nContent-Length: 0\r\n\r\n",
                d.route.join(", "),
                d.local_tag,
                d.remote_tag,
                d.call_id
            )
        } else if !self.paths.is_empty() {
            let keys: Vec<u64> = self.paths.keys().copied().collect();
            let conn = one(c, &keys);
            let path = self.paths.get(&conn).cloned().unwrap_or_default();
            let method = one(c, &["MESSAGE", "INVITE", "OPTIONS", "SUBSCRIBE"]);
            format!(
                "{method} sip:alice@192.168.1.{conn}:5061;transport=tls SIP/2.0\r\n\
                 Via: SIP/2.0/TLS 10.0.0.30:5061;branch=z9hG4bK{n}\r\n\
                 Route: {path}\r\nMax-Forwards: 70\r\n\
                 From: <sip:bob@sipedge.test>;tag=b{n}\r\nTo: <sip:alice@sipedge.test>\r\n\
                 Call-ID: out-{n}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
            )
        } else {
            return;
        };
        self.on_director_bytes(msg.as_bytes());
    }
}
