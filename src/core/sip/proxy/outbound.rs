//! Requests from the inside toward a remote user's flow or a partner edge: the token in a
//! Route that names the flow, and the edits on the way out.

use super::*;

impl Proxy {
    /// A request from the inside toward a remote user or a partner: routed by a token in a
    /// Route that names the edge (Path: a registered flow; Record-Route: a dialog, checked
    /// against the request's Call-ID and tags), or to a partner's domain.
    pub(super) fn outbound_request(
        &self,
        from: &Flow,
        msg: &Message,
        method: Method,
    ) -> Result<Action, Why> {
        let mut splice = Splice::new();
        self.decrement_max_forwards(msg, &mut splice)?;
        if msg.proxy_require.is_some() {
            return Err(Why::BadExtension);
        }
        let popped = self.pop_own_routes(msg, &mut splice);
        let (outside, proof) = match popped.token {
            Some(text) => {
                let claimed = ClaimedToken::parse(text).map_err(|_| Why::InvalidFlowToken)?;
                let (flow, proof) = match claimed.kind {
                    TokenKind::Via => return Err(Why::InvalidFlowToken),
                    TokenKind::Path => (
                        self.keys()
                            .check(&claimed, None)
                            .map_err(|_| Why::InvalidFlowToken)?,
                        Proof::None,
                    ),
                    TokenKind::DialogFromOutside | TokenKind::DialogFromInside => (
                        self.check_dialog_token(msg, &claimed, Side::Internal)?,
                        Proof::Dialog,
                    ),
                };
                let outside = match flow.as_partner() {
                    Some(key) => match self.federation().by_key(key) {
                        Some(p) => Outside::Partner(p),
                        // Not a listed partner: a discovered one (or one that left the topology).
                        None => Outside::Discovered(
                            self.discovered_next_hop(msg, popped.count, true)
                                .ok_or(Why::NoRoute)?,
                        ),
                    },
                    None => Outside::Flow(flow),
                };
                (outside, proof)
            }
            // No route this edge recorded: a request for a partner's domain (or through
            // the partner edge a Route names) goes to that partner; with open federation,
            // any other domain's edge.
            None => {
                let outside = match self.partner_next_hop(msg, popped.count) {
                    Some(p) => Outside::Partner(p),
                    None => Outside::Discovered(
                        self.discovered_next_hop(msg, popped.count, false)
                            .ok_or(Why::NoRoute)?,
                    ),
                };
                (outside, Proof::None)
            }
        };
        let target = match &outside {
            Outside::Partner(p) => {
                self.federation().get(*p).ok_or(Why::NoRoute)?;
                FlowId::partner(p.0)
            }
            Outside::Discovered(DiscoveredTarget::Domain(d))
            | Outside::Discovered(DiscoveredTarget::Edge { domain: d, .. }) => {
                FlowId::partner(discovered_key(d.as_bytes()))
            }
            Outside::Flow(flow) => *flow,
        };
        strip_toward_outside(msg, &mut splice);
        let branch = self.our_branch(from.id, target, msg);
        let insert_at = first_line_of(msg, HeaderName::Via);
        let int = &self.cfg.internal;
        let ext = &self.cfg.external;
        splice.insert_with(insert_at, |out| {
            write_via(out, ext, branch, &from.token);
        });
        if let Some(binding) = self.new_dialog(msg, method) {
            let token = self
                .keys()
                .dialog_token(TokenKind::DialogFromInside, target, binding);
            let at = first_line_of(msg, HeaderName::RecordRoute).min(insert_at);
            splice.insert_with(at, |out| write_record_route(out, ext, int, &token));
        }
        let bytes = splice.apply_tidy(msg).ok_or(Why::MalformedStartLine)?;
        Ok(match outside {
            Outside::Partner(partner) => Action::ToPartner {
                partner,
                bytes,
                proof,
            },
            Outside::Discovered(target) => Action::ToDiscovered {
                target,
                bytes,
                proof,
            },
            Outside::Flow(flow) => Action::ToFlow {
                flow,
                bytes,
                completes: None,
                proof,
            },
        })
    }

    /// With open federation, where a request from the inside for a foreign domain goes: the
    /// edge the next Route names (within the partner's domain), or the domain's SRV. In a
    /// dialog the partner's domain is the To domain; outside one, the Request-URI's.
    pub(super) fn discovered_next_hop(
        &self,
        msg: &Message,
        popped: usize,
        in_dialog: bool,
    ) -> Option<DiscoveredTarget> {
        let federation = self.federation();
        if !federation.discovery {
            return None;
        }
        let domain_of = |span| msg.uri_host(span).and_then(|h| std::str::from_utf8(h).ok());
        let domain = if in_dialog {
            domain_of(msg.to_uri)?
        } else {
            domain_of(msg.request_uri()?)?
        }
        .to_ascii_lowercase();
        // A name, not an address; not ours, not a listed partner's.
        if domain.parse::<std::net::IpAddr>().is_ok()
            || domain.starts_with('[')
            || !domain.contains('.')
            || self.is_served(domain.as_bytes())
            || federation.by_domain(domain.as_bytes()).is_some()
        {
            return None;
        }
        match msg.routes.get(popped) {
            Some(entry) => {
                let bytes = msg.bytes(entry.uri);
                let uri = parse_uri(bytes).ok()?;
                let host = std::str::from_utf8(uri.host.of(bytes))
                    .ok()?
                    .to_ascii_lowercase();
                within(host.as_bytes(), &domain).then(|| DiscoveredTarget::Edge {
                    host,
                    port: uri.port.unwrap_or(5061),
                    domain,
                })
            }
            None => Some(DiscoveredTarget::Domain(domain)),
        }
    }

    /// The partner a request from the inside is for: the host of the first Route after the
    /// edge's own (the partner edge's Record-Route), or else the Request-URI's domain.
    pub(super) fn partner_next_hop(&self, msg: &Message, popped: usize) -> Option<PartnerId> {
        let host = match msg.routes.get(popped) {
            Some(entry) => msg.uri_host(entry.uri)?,
            None => msg.uri_host(msg.request_uri()?)?,
        };
        self.federation().by_host(host)
    }
}

/// A SERVICE for the A/V authentication service: the MS-AVEDGEA media type in
/// Content-Type, whatever its case, parameters or place in a list.
pub(super) fn is_credentials_request(msg: &Message) -> bool {
    let mras = crate::core::mras::CONTENT_TYPE.as_bytes();
    msg.head.headers.iter().any(|h| {
        h.name == HeaderName::ContentType
            && msg.bytes(h.value).split(|&b| b == b',').any(|element| {
                element
                    .split(|&b| b == b';')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(mras))
            })
    })
}

/// What must not leave the trust domain (RFC 3325 §5): the edge's own trust stamp always,
/// and P-Asserted-Identity when the user asked for identity privacy (`Privacy: id`).
pub(super) fn strip_toward_outside(msg: &Message, splice: &mut Splice) {
    let privacy_id = msg.head.headers.iter().any(|h| {
        h.name == HeaderName::Privacy
            && msg
                .bytes(h.value)
                .split(|&b| b == b';' || b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"id"))
    });
    for h in &msg.head.headers {
        let strip = match h.name {
            HeaderName::MsEdgeProxyMessageTrust => true,
            HeaderName::PAssertedIdentity => privacy_id,
            _ => false,
        };
        if strip {
            splice.delete(h.line);
        }
    }
}
