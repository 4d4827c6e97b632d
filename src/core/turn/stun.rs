//! The strict STUN message check (RFC 8489 §5, §14): everything that must hold before any
//! attribute is trusted, done here rather than left to the codec (CRATES.md: stun-rs
//! accepts trailing bytes, duplicate attributes and unknown comprehension-required
//! attributes, and checks FINGERPRINT only when asked):
//! - a 20-byte header with the two leading zero bits, the magic cookie, a length that is a
//!   multiple of 4 and covers exactly the rest of the datagram;
//! - attributes that fit, padded to 4; no attribute twice (but XOR-PEER-ADDRESS, which
//!   CreatePermission repeats); nothing but
//!   MESSAGE-INTEGRITY-SHA256 and FINGERPRINT after MESSAGE-INTEGRITY, nothing after
//!   FINGERPRINT, and a FINGERPRINT that matches;
//! - unknown comprehension-required attributes collected for a 420 (UNKNOWN-ATTRIBUTES).

/// RFC 8489 §5.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// Control messages larger than this are refused (RFC 8489 §6.2.1 asks for 548 bytes over
/// UDP without path MTU knowledge; TCP messages carry DATA, hence the margin).
pub const MAX_MESSAGE: usize = 16 * 1024;
const MAX_ATTRIBUTES: usize = 32;

pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const FINGERPRINT: u16 = 0x8028;
    /// RFC 8656 §18: comprehension-optional.
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;

    /// Comprehension-required attributes this server understands (RFC 8489, 8656, 8445).
    /// DONT-FRAGMENT is not among them: the relay does not set DF per packet, so an
    /// Allocate asking for it gets 420 (RFC 8656 §7.2 lets the client retry without) and a
    /// Send indication carrying it is discarded.
    pub const KNOWN_REQUIRED: &[u16] = &[
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        CHANNEL_NUMBER,
        LIFETIME,
        XOR_PEER_ADDRESS,
        DATA,
        REALM,
        NONCE,
        XOR_RELAYED_ADDRESS,
        REQUESTED_ADDRESS_FAMILY,
        EVEN_PORT,
        REQUESTED_TRANSPORT,
        MESSAGE_INTEGRITY_SHA256,
        PASSWORD_ALGORITHM,
        USERHASH,
        XOR_MAPPED_ADDRESS,
        RESERVATION_TOKEN,
        PRIORITY,
        USE_CANDIDATE,
    ];
}

/// Message class (RFC 8489 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// One attribute: its type and where its value is in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub kind: u16,
    pub start: usize,
    pub len: usize,
}

/// A message that passed every structural check. Fixed-size (no allocation): a Send
/// indication is checked on the relay's per-packet path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub class: Class,
    /// The 12-bit method (0x001 Binding, 0x003 Allocate, ...).
    pub method: u16,
    pub transaction_id: [u8; 12],
    attributes: [Attribute; MAX_ATTRIBUTES],
    attribute_count: usize,
    unknown_required: [u16; MAX_ATTRIBUTES],
    unknown_count: usize,
    /// Offset of MESSAGE-INTEGRITY's header, if present (what its HMAC covers ends here).
    pub integrity_at: Option<usize>,
}

impl Checked {
    pub fn get(&self, kind: u16) -> Option<Attribute> {
        self.attributes().iter().copied().find(|a| a.kind == kind)
    }

    /// The attributes in message order.
    pub fn attributes(&self) -> &[Attribute] {
        self.attributes
            .get(..self.attribute_count)
            .unwrap_or_default()
    }

    /// Unknown comprehension-required attributes (answer 420 to a request).
    pub fn unknown_required(&self) -> &[u16] {
        self.unknown_required
            .get(..self.unknown_count)
            .unwrap_or_default()
    }
}

const NO_ATTRIBUTE: Attribute = Attribute {
    kind: 0,
    start: 0,
    len: 0,
};

/// Why a message is not STUN we will process. Malformed messages are dropped silently
/// (RFC 8489 §6.3: no error response to something that is not a valid STUN message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StunError {
    TooShort,
    NotStun,
    BadLength,
    TooLarge,
    Trailing,
    AttributeOverflow,
    DuplicateAttribute(u16),
    AfterIntegrity(u16),
    AfterFingerprint,
    BadFingerprint,
    TooManyAttributes,
}

/// Checks a whole datagram (or a whole framed stream message).
pub fn check(msg: &[u8]) -> Result<Checked, StunError> {
    let header = msg.first_chunk::<HEADER_LEN>().ok_or(StunError::TooShort)?;
    let [t0, t1, l0, l1, k0, k1, k2, k3, id @ ..] = *header;
    let msg_type = u16::from_be_bytes([t0, t1]);
    if msg_type & 0xC000 != 0 || u32::from_be_bytes([k0, k1, k2, k3]) != MAGIC_COOKIE {
        return Err(StunError::NotStun);
    }
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    if len % 4 != 0 {
        return Err(StunError::BadLength);
    }
    if HEADER_LEN + len > MAX_MESSAGE {
        return Err(StunError::TooLarge);
    }
    match msg.len().cmp(&(HEADER_LEN + len)) {
        std::cmp::Ordering::Less => return Err(StunError::BadLength),
        std::cmp::Ordering::Greater => return Err(StunError::Trailing),
        std::cmp::Ordering::Equal => {}
    }
    let class = match ((msg_type >> 7) & 0b10) | ((msg_type >> 4) & 0b01) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    let method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80);
    let transaction_id: [u8; 12] = id;

    let mut attributes = [NO_ATTRIBUTE; MAX_ATTRIBUTES];
    let mut attribute_count = 0;
    let mut unknown_required = [0u16; MAX_ATTRIBUTES];
    let mut unknown_count = 0;
    let mut integrity_at = None;
    let mut seen_sha256 = false;
    let mut seen_fingerprint = false;
    let mut pos = HEADER_LEN;
    while pos < msg.len() {
        if seen_fingerprint {
            return Err(StunError::AfterFingerprint);
        }
        let &[a0, a1, a2, a3] = msg
            .get(pos..)
            .and_then(|rest| rest.first_chunk::<4>())
            .ok_or(StunError::AttributeOverflow)?;
        let kind = u16::from_be_bytes([a0, a1]);
        let alen = usize::from(u16::from_be_bytes([a2, a3]));
        let start = pos + 4;
        let padded_end = start + alen.next_multiple_of(4);
        if padded_end > msg.len() {
            return Err(StunError::AttributeOverflow);
        }
        // CreatePermission may name several peers (RFC 8656 §9.1); nothing else repeats.
        let seen = attributes.get(..attribute_count).unwrap_or_default();
        if kind != attr::XOR_PEER_ADDRESS && seen.iter().any(|a| a.kind == kind) {
            return Err(StunError::DuplicateAttribute(kind));
        }
        let Some(slot) = attributes.get_mut(attribute_count) else {
            return Err(StunError::TooManyAttributes);
        };
        *slot = Attribute {
            kind,
            start,
            len: alen,
        };
        // RFC 8489 §14.5/§14.6: after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and
        // FINGERPRINT; after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT.
        let allowed_after_mi = kind == attr::MESSAGE_INTEGRITY_SHA256 || kind == attr::FINGERPRINT;
        if (integrity_at.is_some() && !allowed_after_mi)
            || (seen_sha256 && kind != attr::FINGERPRINT)
        {
            return Err(StunError::AfterIntegrity(kind));
        }
        match kind {
            attr::MESSAGE_INTEGRITY => integrity_at = Some(pos),
            attr::MESSAGE_INTEGRITY_SHA256 => {
                integrity_at.get_or_insert(pos);
                seen_sha256 = true;
            }
            attr::FINGERPRINT => {
                let &value = msg
                    .get(start..)
                    .and_then(|rest| rest.first_chunk::<4>())
                    .filter(|_| alen == 4)
                    .ok_or(StunError::BadFingerprint)?;
                let expected = crc32(msg.get(..pos).unwrap_or_default(), length_through(pos))
                    ^ FINGERPRINT_XOR;
                if u32::from_be_bytes(value) != expected {
                    return Err(StunError::BadFingerprint);
                }
                seen_fingerprint = true;
            }
            k if k < 0x8000 && !attr::KNOWN_REQUIRED.contains(&k) => {
                // Fits: every unknown attribute is also one of the (bounded) attributes.
                if let Some(slot) = unknown_required.get_mut(unknown_count) {
                    *slot = k;
                    unknown_count += 1;
                }
            }
            _ => {}
        }
        attribute_count += 1;
        pos = padded_end;
    }
    Ok(Checked {
        class,
        method,
        transaction_id,
        attributes,
        attribute_count,
        unknown_required,
        unknown_count,
        integrity_at,
    })
}

/// The header's length field as FINGERPRINT covers it: the message up to and including
/// FINGERPRINT (RFC 8489 §14.7). FINGERPRINT is last, so this is the real length; computing
/// it keeps the CRC honest whatever the header claims.
fn length_through(fingerprint_at: usize) -> u16 {
    u16::try_from(fingerprint_at + 8 - HEADER_LEN).unwrap_or(u16::MAX)
}

/// CRC-32 (IEEE 802.3) of `data` with the header's length field replaced by `len_field`:
/// FINGERPRINT's CRC, for checking here and for writing in `encode`.
pub(crate) fn crc32(data: &[u8], len_field: u16) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    let [len_hi, len_lo] = len_field.to_be_bytes();
    for (i, &b) in data.iter().enumerate() {
        let b = match i {
            2 => len_hi,
            3 => len_lo,
            _ => b,
        };
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.1: sample request (short-term credentials), with FINGERPRINT.
    const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    fn binding(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in attrs {
            body.extend_from_slice(&k.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn the_rfc5769_request_checks_including_its_fingerprint() {
        let c = check(&RFC5769_REQUEST).unwrap();
        assert_eq!((c.class, c.method), (Class::Request, 0x001));
        assert_eq!(c.integrity_at, Some(20 + 20 + 8 + 12 + 16));
        assert!(c.get(attr::USERNAME).is_some());
        assert!(c.unknown_required().is_empty());
        let mut tampered = RFC5769_REQUEST;
        tampered[30] ^= 1;
        assert_eq!(check(&tampered), Err(StunError::BadFingerprint));
    }

    #[test]
    fn structure_is_enforced() {
        let ok = binding(&[(attr::PRIORITY, &[0, 0, 0, 1])]);
        assert!(check(&ok).is_ok());
        let mut trailing = ok.clone();
        trailing.extend_from_slice(&[0; 4]);
        assert_eq!(check(&trailing), Err(StunError::Trailing));
        assert_eq!(check(&ok[..ok.len() - 4]), Err(StunError::BadLength));
        assert_eq!(check(&ok[..10]), Err(StunError::TooShort));
        let mut no_cookie = ok.clone();
        no_cookie[4] = 0;
        assert_eq!(check(&no_cookie), Err(StunError::NotStun));
        let dup = binding(&[
            (attr::PRIORITY, &[0, 0, 0, 1]),
            (attr::PRIORITY, &[0, 0, 0, 2]),
        ]);
        assert_eq!(
            check(&dup),
            Err(StunError::DuplicateAttribute(attr::PRIORITY))
        );
        let after_mi = binding(&[
            (attr::MESSAGE_INTEGRITY, &[0; 20]),
            (attr::USERNAME, b"evil"),
        ]);
        assert_eq!(
            check(&after_mi),
            Err(StunError::AfterIntegrity(attr::USERNAME))
        );
        let unknown = binding(&[(0x7777, b"x"), (0x8777, b"y")]);
        assert_eq!(check(&unknown).unwrap().unknown_required(), vec![0x7777]);
        let mut overflow = binding(&[(attr::USERNAME, b"abcd")]);
        overflow[23] = 200; // the attribute claims more than there is
        assert_eq!(check(&overflow), Err(StunError::AttributeOverflow));
    }

    #[test]
    fn messages_encoded_by_stun_rs_check() {
        use stun_rs::attributes::stun::{Fingerprint, Software};
        use stun_rs::methods::BINDING;
        use stun_rs::{MessageClass, MessageEncoderBuilder, StunMessageBuilder};
        let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_attribute(Software::new("sipedge test").unwrap())
            .with_attribute(Fingerprint::default())
            .build();
        let mut buf = [0u8; 128];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &msg)
            .unwrap();
        let c = check(&buf[..n]).unwrap();
        assert_eq!((c.class, c.method), (Class::Request, 1));
        assert!(c.get(attr::FINGERPRINT).is_some());
    }

    #[test]
    fn classes_and_methods() {
        let mut m = binding(&[]);
        for (t, class, method) in [
            (0x0001u16, Class::Request, 0x001u16),
            (0x0101, Class::Success, 0x001),
            (0x0111, Class::Error, 0x001),
            (0x0003, Class::Request, 0x003),
            (0x0016, Class::Indication, 0x006),
            (0x0017, Class::Indication, 0x007),
            (0x0009, Class::Request, 0x009),
        ] {
            m[..2].copy_from_slice(&t.to_be_bytes());
            let c = check(&m).unwrap();
            assert_eq!((c.class, c.method), (class, method), "{t:#06x}");
        }
    }
}
