//! Requests from outside (remote users and partner edges) toward the Director pool: who
//! the sender is, what it proves, what it may reach, and the edits on the way in.

use super::*;

impl Proxy {
    /// A request from the Internet toward the Director pool.
    pub(super) fn inbound_request(
        &self,
        from: &Flow,
        msg: &Message,
        method: Method,
    ) -> Result<Action, Why> {
        // RFC 3261 §16.3 step 4: a request from outside that already passed this edge is a loop.
        if msg
            .vias
            .iter()
            .any(|v| self.is_own_via(msg, v.host, v.port))
        {
            return Err(Why::Loop);
        }
        let federation = self.federation();
        let sender = self.sender(from, msg, method, &federation)?;
        let mut splice = Splice::new();
        self.decrement_max_forwards(msg, &mut splice)?;
        if msg.proxy_require.is_some() {
            return Err(Why::BadExtension);
        }
        // `maddr` tells whoever reads the URI next where to send it instead: from outside
        // that is a way to aim the inside's proxies anywhere.
        if self.any_maddr(msg) {
            return Err(Why::MaddrNotAllowed);
        }
        // In-dialog requests come back to the partner (any connection to its edge), to a
        // remote user on this very flow.
        let route_flow = match &sender {
            Sender::Partner(id, _) => FlowId::partner(id.0),
            Sender::Discovered { domain, .. } => FlowId::partner(discovered_key(domain.as_bytes())),
            Sender::User => from.id,
        };
        let popped = self.pop_own_routes(msg, &mut splice);
        let proof = self.inbound_proof(msg, route_flow, popped.token)?;
        let beyond = msg.routes.get(popped.count..).unwrap_or_default();
        match proof {
            Proof::None => {
                if !self.request_uri_allowed_outside_dialog(msg) {
                    return Err(Why::DomainNotServed);
                }
                if !beyond.is_empty() {
                    return Err(Why::RouteNotAllowed);
                }
            }
            // In a dialog the Request-URI is the peer's Contact and further Routes are the
            // inside's own Record-Routes; still, none may aim the inside back at another
            // service of the edge's internal side (its operations port, its relay).
            // An entry naming the edge's own SIP listener again is a second pass through the
            // edge (a call between two of its remote users), and carries the edge's token for
            // that pass, checked when the request comes back from the inside; one without a
            // token would have the inside hand the request back to the edge as its own, to
            // be sent on wherever its Request-URI says.
            Proof::Dialog => {
                if beyond.iter().any(|e| {
                    self.names_edge_service(msg, e.uri)
                        || self
                            .own_route_user(msg, e)
                            .is_some_and(|user| ClaimedToken::parse(msg.bytes(user)).is_err())
                }) {
                    return Err(Why::RouteNotAllowed);
                }
                let ruri = msg.request_uri().unwrap_or_default();
                if self.names_edge_service(msg, ruri) {
                    return Err(Why::RequestUriNotAllowed);
                }
            }
        }
        self.strip_from_outside(msg, &mut splice);
        self.fill_received(from, msg, &mut splice);

        let branch = self.our_branch(from.id, FlowId::POOL, msg);
        let insert_at = first_line_of(msg, HeaderName::Via);
        let int = &self.cfg.internal;
        let ext = &self.cfg.external;
        splice.insert_with(insert_at, |out| {
            write_via(out, int, branch, &from.token);
            match &sender {
                Sender::User => {}
                Sender::Partner(_, partner) => {
                    write_trust(out, "DirectPartner", partner.label().as_bytes())
                }
                Sender::Discovered { edge, .. } => {
                    write_trust(out, "DiscoveredPartner", edge.as_bytes())
                }
            }
        });
        if let Some(binding) = self.new_dialog(msg, method) {
            let token = self
                .keys()
                .dialog_token(TokenKind::DialogFromOutside, route_flow, binding);
            // RFC 5658: one entry per interface; the top one faces the next hop.
            let at = first_line_of(msg, HeaderName::RecordRoute).min(insert_at);
            splice.insert_with(at, |out| write_record_route(out, int, ext, &token));
        }
        if method == Method::Register {
            // RFC 3327: requests for this contact come back through the edge, to this flow.
            let token = self.keys().token(TokenKind::Path, from.id);
            let at = first_line_of(msg, HeaderName::Path).min(insert_at);
            splice.insert_with(at, |out| {
                out.extend_from_slice(b"Path: ");
                write_route_uri(out, int, Some(&token));
                out.extend_from_slice(b"\r\n");
            });
        }
        let bytes = splice.apply_tidy(msg).ok_or(Why::MalformedStartLine)?;
        let tx = (method != Method::Ack).then_some((
            TxKey {
                branch,
                cancel: method == Method::Cancel,
            },
            method,
        ));
        Ok(Action::ToPool { bytes, tx, proof })
    }

    /// What a request from outside proves with the token of the edge's Route it carries:
    /// a dialog, only with a Record-Route token of `route_flow` (this connection, or this
    /// partner) bound to the request's Call-ID and initiator tag. A token that is not a
    /// token at all (a preloaded Route with a user part) or a genuine one of another flow
    /// proves nothing; a forged one, a Path or Via token, or a Record-Route token of
    /// another dialog is refused.
    pub(super) fn inbound_proof(
        &self,
        msg: &Message,
        route_flow: FlowId,
        token: Option<&[u8]>,
    ) -> Result<Proof, Why> {
        let Some(text) = token else {
            return Ok(Proof::None);
        };
        let Ok(claimed) = ClaimedToken::parse(text) else {
            return Ok(Proof::None);
        };
        if !claimed.kind.is_dialog() {
            return Err(Why::InvalidFlowToken);
        }
        let flow = self.check_dialog_token(msg, &claimed, Side::External)?;
        Ok(if flow == route_flow {
            Proof::Dialog
        } else {
            Proof::None
        })
    }

    /// Checks a Record-Route token against the request's dialog: the initiator's tag is the
    /// From tag when the request goes the way the dialog's first request went (it arrived
    /// on the side that initiated), the To tag when it goes back.
    pub(super) fn check_dialog_token(
        &self,
        msg: &Message,
        claimed: &ClaimedToken,
        arrived: Side,
    ) -> Result<FlowId, Why> {
        let initiated_outside = claimed.kind == TokenKind::DialogFromOutside;
        let same_way = initiated_outside == (arrived == Side::External);
        let tag = if same_way { msg.from_tag } else { msg.to_tag };
        let tag = tag.ok_or(Why::InvalidFlowToken)?;
        let binding = DialogBinding {
            call_id: msg.bytes(msg.call_id),
            initiator_tag: msg.bytes(tag),
        };
        self.keys()
            .check(claimed, Some(binding))
            .map_err(|_| Why::InvalidFlowToken)
    }

    /// Who sent a request from outside. On a partner's connection the From domain must be
    /// the partner's and the To domain ours; partners do not register. Elsewhere nobody may
    /// claim a listed partner's domain; with open federation, a connection whose certificate
    /// names a host within the (foreign) From domain is that domain's edge, held to the same
    /// rules.
    pub(super) fn sender<'f>(
        &self,
        from: &Flow,
        msg: &Message,
        method: Method,
        federation: &'f Federation,
    ) -> Result<Sender<'f>, Why> {
        let to_ours = || {
            let to_domain = msg.uri_host(msg.to_uri).unwrap_or_default();
            if self.is_served(to_domain) {
                Ok(())
            } else {
                Err(Why::PartnerTargetNotServed)
            }
        };
        let from_domain = msg.uri_host(msg.from_uri).unwrap_or_default();
        if let Some(id) = from.partner {
            let partner = federation.get(id).ok_or(Why::NotPartnerEdge)?;
            if method == Method::Register {
                return Err(Why::PartnerRegister);
            }
            if federation.by_domain(from_domain) != Some(id) {
                return Err(Why::PartnerDomainMismatch);
            }
            to_ours()?;
            return Ok(Sender::Partner(id, partner));
        }
        if federation.by_domain(from_domain).is_some() {
            return Err(Why::NotPartnerEdge);
        }
        match self.discovered_edge(from, from_domain, federation) {
            // A certificate that does not cover the foreign domain it writes from.
            None if federation.discovery
                && from.certificate.is_some()
                && !from_domain.is_empty()
                && !self.is_served(from_domain) =>
            {
                Err(Why::NotPartnerEdge)
            }
            Some(edge) => {
                if method == Method::Register {
                    return Err(Why::PartnerRegister);
                }
                to_ours()?;
                Ok(Sender::Discovered {
                    domain: String::from_utf8_lossy(from_domain).to_ascii_lowercase(),
                    edge,
                })
            }
            None => Ok(Sender::User),
        }
    }

    /// With open federation: the certificate name that makes `from` an edge of
    /// `from_domain` (a foreign domain), if any.
    pub(super) fn discovered_edge(
        &self,
        from: &Flow,
        from_domain: &[u8],
        federation: &Federation,
    ) -> Option<String> {
        if !federation.discovery || from_domain.is_empty() || self.is_served(from_domain) {
            return None;
        }
        let domain = std::str::from_utf8(from_domain).ok()?;
        from.certificate
            .as_deref()?
            .iter()
            .find(|n| within(n.as_bytes(), domain))
            .cloned()
    }

    /// The From domain of a request from a discovered partner edge (open federation), for
    /// the shell's per-domain rate; `None` for anyone else.
    pub fn discovered_sender<'m>(&self, from: &Flow, msg: &'m Message) -> Option<&'m [u8]> {
        if from.partner.is_some() {
            return None;
        }
        let from_domain = msg.uri_host(msg.from_uri)?;
        self.discovered_edge(from, from_domain, &self.federation())
            .map(|_| from_domain)
    }

    /// Whether a URI names exactly the external SIP listener: one of its names or its
    /// address, and its port (absent means 5061, the SIP-over-TLS default).
    pub(super) fn is_external_listener_uri(&self, msg: &Message, uri: Span) -> bool {
        let bytes = msg.bytes(uri);
        let Ok(u) = parse_uri(bytes) else {
            return false;
        };
        let host = u.host.of(bytes);
        self.cfg
            .external_hosts
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(host))
            && u.port.unwrap_or(5061) == self.cfg.external.port
    }

    /// Outside a dialog, what a request from outside may name: a served domain (on no port
    /// or a standard SIP port: a port is a way to reach another service of the same name),
    /// or exactly the edge's external listener. Never the edge's internal address, nor any
    /// other port of its own.
    pub(super) fn request_uri_allowed_outside_dialog(&self, msg: &Message) -> bool {
        let Some(ruri) = msg.request_uri() else {
            return false;
        };
        let bytes = msg.bytes(ruri);
        let Ok(u) = parse_uri(bytes) else {
            return false;
        };
        if self.is_served(u.host.of(bytes)) {
            return matches!(u.port, None | Some(5060) | Some(5061));
        }
        self.is_external_listener_uri(msg, ruri)
    }

    /// `maddr` in the Request-URI or in any Route entry.
    pub(super) fn any_maddr(&self, msg: &Message) -> bool {
        let has = |span: Span| {
            let bytes = msg.bytes(span);
            // Parsed only when the text holds the name at all (nearly never).
            bytes.windows(5).any(|w| w.eq_ignore_ascii_case(b"maddr"))
                && parse_uri(bytes).is_ok_and(|u| uri_has_param(bytes, &u, b"maddr"))
        };
        msg.request_uri().is_some_and(has) || msg.routes.iter().any(|r| has(r.uri))
    }

    pub(super) fn is_own_via(&self, msg: &Message, host: Span, port: Option<u16>) -> bool {
        let host = msg.bytes(host);
        let port = port.unwrap_or(5061);
        [&self.cfg.external, &self.cfg.internal]
            .iter()
            .any(|own| own.port == port && own.host.as_bytes().eq_ignore_ascii_case(host))
    }

    /// Removes what only a trust domain may set: the built-in list and the operator's.
    pub(super) fn strip_from_outside(&self, msg: &Message, splice: &mut Splice) {
        let extra = self.strip_headers.read_unpoisoned();
        for h in &msg.head.headers {
            let strip = h.name.carries_trust()
                || (h.name == HeaderName::Other
                    && extra
                        .iter()
                        .any(|n| n.as_bytes().eq_ignore_ascii_case(msg.bytes(h.name_span))));
            if strip {
                splice.delete(h.line);
            }
        }
    }

    /// RFC 3581 / RFC 3261 §18.2.1: record where the request really came from. `received`
    /// is written whenever the sent-by is not the source address, or the sender wrote a
    /// `received` of its own (with a value or without), or asked for `rport`; the sender's
    /// value is never kept.
    pub(super) fn fill_received(&self, from: &Flow, msg: &Message, splice: &mut Splice) {
        let Some(top) = msg.top_via() else { return };
        let ip = from.remote.ip();
        if let Some(rport) = top.rport {
            match rport.value {
                None => splice.insert_with(rport.name.end, |out| {
                    out.push(b'=');
                    push_decimal(out, u64::from(from.remote.port()));
                }),
                Some(v) => {
                    splice.replace_with(v, |out| push_decimal(out, u64::from(from.remote.port())))
                }
            }
        }
        let written = msg.bytes(top.host);
        let same = std::str::from_utf8(written)
            .ok()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok())
            .is_some_and(|h| h == ip);
        match top.received {
            Some(received) => splice.replace_with(received.whole, |out| push_received(out, ip)),
            None if !same || top.rport.is_some() => {
                splice.insert_with(top.value.end, |out| push_received(out, ip));
            }
            None => {}
        }
    }
}

/// `;received=<address>` (RFC 3261 §20.42: an IPv6 address without brackets).
pub(super) fn push_received(out: &mut Vec<u8>, ip: IpAddr) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, ";received={ip}");
}

/// Whether a URI carries a `uri-parameter` of this name (case-insensitive).
pub(super) fn uri_has_param(bytes: &[u8], uri: &Uri, name: &[u8]) -> bool {
    uri.params.of(bytes).split(|&b| b == b';').any(|p| {
        let n = p.split(|&b| b == b'=').next().unwrap_or_default();
        n.trim_ascii().eq_ignore_ascii_case(name)
    })
}
