//! Responses: forwarded only when the branch in the edge's Via is the one it minted for the
//! flows and the transaction they answer; the edge's Via comes off on the way.

use super::*;

impl Proxy {
    /// A response: its top Via must be the edge's, with a token naming the flow the request
    /// came from and the branch the edge minted for that flow, the flow this response
    /// arrived on, and the transaction the next Via names. The Via is removed and the rest
    /// passes unchanged.
    pub(super) fn response(&self, from: &Flow, msg: &Message, status: u16) -> Result<Action, Why> {
        let top = msg.top_via().ok_or(Why::StrayResponse)?;
        let own = match from.side {
            Side::External => &self.cfg.external,
            Side::Internal => &self.cfg.internal,
        };
        let host_matches = msg
            .bytes(top.host)
            .eq_ignore_ascii_case(own.host.as_bytes())
            && top.port.unwrap_or(5061) == own.port;
        if !host_matches {
            return Err(Why::StrayResponse);
        }
        // With only the edge's Via there is nobody to send it to: removing ours would
        // forward a response without any Via.
        let next = msg.vias.get(1).ok_or(Why::StrayResponse)?;
        let token = find_ftok(msg, top.value).ok_or(Why::StrayResponse)?;
        let keys = self.keys();
        let origin = keys
            .verify(TokenKind::Via, token)
            .map_err(|_| Why::StrayResponse)?;
        let branch = top
            .branch
            .and_then(|b| parse_our_branch(msg.bytes(b)))
            .ok_or(Why::StrayResponse)?;
        let tx = sender_tx(msg, next);
        let minted = |target: FlowId| keys.branch_matches(origin, target, tx, branch);
        let answered_by_this_flow = match (from.side, from.partner) {
            (Side::Internal, _) => minted(FlowId::POOL),
            (Side::External, Some(p)) => minted(FlowId::partner(p.0)),
            (Side::External, None) => {
                minted(from.id)
                    || msg
                        .uri_host(msg.to_uri)
                        .filter(|to| self.discovered_edge(from, to, &self.federation()).is_some())
                        .is_some_and(|to| minted(FlowId::partner(discovered_key(to))))
            }
        };
        if !answered_by_this_flow {
            return Err(Why::StrayResponse);
        }

        let mut splice = Splice::new();
        remove_top_via(msg, &mut splice);
        match from.side {
            Side::External => {
                let federation = self.federation();
                self.strip_from_outside(msg, &mut splice);
                let partner = from.partner.and_then(|p| federation.get(p));
                let stamp = match partner {
                    Some(partner) => Some(("DirectPartner", partner.label().to_string())),
                    None => {
                        let to_domain = msg.uri_host(msg.to_uri).unwrap_or_default();
                        self.discovered_edge(from, to_domain, &federation)
                            .map(|edge| ("DiscoveredPartner", edge))
                    }
                };
                if let Some((kind, name)) = stamp {
                    let at = msg
                        .head
                        .headers
                        .get(next.header)
                        .map_or(msg.head.start_line.end, |h| h.line.start);
                    splice.insert_with(at, |out| write_trust(out, kind, name.as_bytes()));
                }
            }
            Side::Internal => strip_toward_outside(msg, &mut splice),
        }
        let bytes = splice.apply_tidy(msg).ok_or(Why::StrayResponse)?;
        let completes = (status >= 200 && from.side == Side::Internal).then_some(TxKey {
            branch,
            cancel: msg.bytes(msg.cseq_method) == b"CANCEL",
        });
        Ok(Action::ToFlow {
            flow: origin,
            bytes,
            completes,
            proof: Proof::None,
        })
    }
}

/// The `ftok` parameter of the edge's Via value.
pub(super) fn find_ftok(msg: &Message, via_value: Span) -> Option<&[u8]> {
    let v = msg.bytes(via_value);
    let at = v.windows(6).position(|w| w == b";ftok=")?;
    let token = v.get(at + 6..at + 6 + TOKEN_LEN)?;
    // The token must end the parameter.
    match v.get(at + 6 + TOKEN_LEN) {
        None | Some(b';') | Some(b' ') | Some(b'\t') => Some(token),
        _ => None,
    }
}

/// The hash from a branch the edge wrote (`z9hG4bKse` + 16 hex digits).
pub(super) fn parse_our_branch(b: &[u8]) -> Option<u64> {
    debug_assert!(BRANCH_PREFIX.starts_with(MAGIC_COOKIE));
    let hex = b.strip_prefix(BRANCH_PREFIX)?;
    if hex.len() != 16 || !hex.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Removes the top Via value: the whole line if it is the only value on it.
pub(super) fn remove_top_via(msg: &Message, splice: &mut Splice) {
    let (Some(top), next) = (msg.vias.first(), msg.vias.get(1)) else {
        return;
    };
    match next {
        Some(n) if n.header == top.header => {
            splice.delete(Span::new(top.value.start, n.value.start));
        }
        _ => {
            if let Some(h) = msg.head.headers.get(top.header) {
                splice.delete(h.line);
            }
        }
    }
}
