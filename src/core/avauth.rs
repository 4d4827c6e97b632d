//! The A/V authentication service: answers a relay-credentials SERVICE request from the
//! inside (MS-AVEDGEA) with credentials minted from the pool key ring and the relay list.
//! Sans-IO: the message, the ring, the relay and `now` in; the SIP response out.

use super::credentials::{self, MIN_LIFETIME_SECS};
use super::keyring::Ring;
use super::mras::{self, Location, MediaRelay};
use super::sip::message::Message;
use super::sip::reject;

/// The relay as advertised (from the topology's `[relay]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayInfo {
    pub host: String,
    pub udp_port: u16,
    pub tcp_port: u16,
    /// TURN over TLS (`turns:`), when the relay offers it.
    pub tls_port: Option<u16>,
    /// The longest lifetime issued, in seconds.
    pub max_lifetime_secs: u64,
}

/// Minutes issued when the request does not say: a working day (the Lync default, 480).
pub const DEFAULT_MINUTES: u64 = 480;

/// What happened, for counters and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Issued to this identity for this many seconds.
    Issued {
        identity: String,
        lifetime_secs: u64,
    },
    /// Refused with 400 for this reason.
    Malformed(String),
    /// No service configured (404).
    NoService,
}

/// The SIP response to a credentials request (`None` only if no response can be formed).
pub fn answer(
    msg: &Message,
    service: Option<(&Ring, &RelayInfo)>,
    now_unix: u64,
) -> (Option<Vec<u8>>, Outcome) {
    let Some((ring, relay)) = service else {
        let r = reject::response(&msg.raw, 404, "No A/V Authentication Service", b"");
        return (r, Outcome::NoService);
    };
    let bad = |why: String| {
        // The reason phrase is fixed; the precise problem goes in a Warning (RFC 3261 §20.43).
        let warning = format!(
            "Warning: 399 sipedge \"{}\"\r\n",
            why.replace(['"', '\\', '\r', '\n'], "'")
        );
        (
            reject::response(
                &msg.raw,
                400,
                "Malformed Credentials Request",
                warning.as_bytes(),
            ),
            Outcome::Malformed(why),
        )
    };
    let req = match mras::parse_request(msg.bytes(msg.body)) {
        Ok(r) => r,
        Err(e) => return bad(e.to_string()),
    };
    let asked = req
        .duration_minutes
        .unwrap_or(DEFAULT_MINUTES)
        .saturating_mul(60);
    let lifetime = asked.clamp(
        MIN_LIFETIME_SECS,
        relay.max_lifetime_secs.max(MIN_LIFETIME_SECS),
    );
    let credential = match credentials::mint(ring, &req.identity, lifetime, now_unix) {
        Ok(c) => c,
        Err(e) => return bad(format!("identity: {e}")),
    };
    let relays = [MediaRelay {
        location: req.location.unwrap_or(Location::Internet),
        host: &relay.host,
        udp_port: relay.udp_port,
        tcp_port: relay.tcp_port,
    }];
    let body = mras::response_body(
        &req,
        &credential.username,
        &credential.password,
        lifetime / 60,
        &relays,
    );
    let response = reject::response_with_body(
        &msg.raw,
        200,
        "OK",
        b"",
        Some((mras::CONTENT_TYPE, body.as_bytes())),
    );
    (
        response,
        Outcome::Issued {
            identity: req.identity,
            lifetime_secs: lifetime,
        },
    )
}
