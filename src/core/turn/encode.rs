//! Writing STUN messages (RFC 8489 §5, §14): header, attributes padded to 4, XOR-encoded
//! addresses, ERROR-CODE, MESSAGE-INTEGRITY over the message so far and FINGERPRINT last.
//! The Binding responder every listener runs is here too.

use std::net::{IpAddr, SocketAddr};

use super::stun::{attr, Checked, Class, HEADER_LEN, MAGIC_COOKIE};

/// SOFTWARE (RFC 8489 §14.14): the product, never its version (no free reconnaissance).
pub const SOFTWARE: &str = "sipedge";
pub const BINDING: u16 = 0x001;

/// A message being written.
pub struct Writer {
    buf: Vec<u8>,
    transaction_id: [u8; 12],
}

fn message_type(class: Class, method: u16) -> u16 {
    let c = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
}

impl Writer {
    pub fn new(class: Class, method: u16, transaction_id: [u8; 12]) -> Writer {
        Writer::reuse(Vec::with_capacity(128), class, method, transaction_id)
    }

    /// A writer into `buf`'s allocation, emptied first: the relay writes a Data indication
    /// per packet without allocating.
    pub fn reuse(mut buf: Vec<u8>, class: Class, method: u16, transaction_id: [u8; 12]) -> Writer {
        buf.clear();
        buf.extend_from_slice(&message_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction_id);
        Writer {
            buf,
            transaction_id,
        }
    }

    fn set_length(&mut self, extra: usize) {
        let len = u16::try_from(self.buf.len() - HEADER_LEN + extra).unwrap_or(u16::MAX);
        if let Some(field) = self.buf.get_mut(2..4) {
            field.copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Appends an attribute, padded to a multiple of 4.
    pub fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf
            .extend_from_slice(value.get(..usize::from(len)).unwrap_or(value));
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        self
    }

    /// XOR-MAPPED-ADDRESS, XOR-RELAYED-ADDRESS or XOR-PEER-ADDRESS (RFC 8489 §14.2).
    pub fn xor_address(&mut self, kind: u16, addr: SocketAddr) -> &mut Self {
        // On the stack: a Data indication per relayed packet writes one.
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let port = (addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
        let mut value = [0u8; 20];
        let len = match addr.ip() {
            IpAddr::V4(a) => {
                value[..4].copy_from_slice(&[0, 0x01, port[0], port[1]]);
                for ((v, x), k) in value[4..8].iter_mut().zip(a.octets()).zip(cookie) {
                    *v = x ^ k;
                }
                8
            }
            IpAddr::V6(a) => {
                value[..4].copy_from_slice(&[0, 0x02, port[0], port[1]]);
                let key = cookie.iter().chain(self.transaction_id.iter());
                for ((v, x), k) in value[4..20].iter_mut().zip(a.octets()).zip(key) {
                    *v = x ^ k;
                }
                20
            }
        };
        self.attr(kind, value.get(..len).unwrap_or_default())
    }

    /// ERROR-CODE (RFC 8489 §14.8).
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut value = vec![
            0,
            0,
            u8::try_from(code / 100).unwrap_or(0),
            u8::try_from(code % 100).unwrap_or(0),
        ];
        value.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &value)
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1 with `key`) over the message so far.
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        self.set_length(24);
        let mac = super::auth::integrity(key, &self.buf);
        self.attr(attr::MESSAGE_INTEGRITY, &mac)
    }

    /// MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, full 32 bytes) over the message so far.
    pub fn integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        self.set_length(36);
        let mac = super::auth::integrity_sha256(key, &self.buf);
        self.attr(attr::MESSAGE_INTEGRITY_SHA256, &mac)
    }

    /// The integrity a response owes its request: MESSAGE-INTEGRITY, and
    /// MESSAGE-INTEGRITY-SHA256 after it when the request used it (RFC 8489 §9.2.4).
    pub fn sign(&mut self, key: &[u8], sha256: bool) -> &mut Self {
        self.integrity(key);
        if sha256 {
            self.integrity_sha256(key);
        }
        self
    }

    /// FINGERPRINT, last (RFC 8489 §14.7), and the final length.
    pub fn finish_with_fingerprint(mut self) -> Vec<u8> {
        self.set_length(8);
        let len = u16::try_from(self.buf.len() + 8 - HEADER_LEN).unwrap_or(u16::MAX);
        let crc = super::stun::crc32(&self.buf, len) ^ 0x5354_554e;
        self.attr(attr::FINGERPRINT, &crc.to_be_bytes());
        self.buf
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.set_length(0);
        self.buf
    }
}

/// The 420 answer to a request with comprehension-required attributes the relay does not
/// honour, naming them in UNKNOWN-ATTRIBUTES (RFC 8489 §14.13). Unsigned: it answers before
/// authentication.
pub fn unknown_attributes_answer(checked: &Checked) -> Vec<u8> {
    let refused = super::error::Refused::UnknownAttribute;
    let unknown: Vec<u8> = checked
        .unknown_required()
        .iter()
        .flat_map(|k| k.to_be_bytes())
        .collect();
    let mut w = Writer::new(Class::Error, checked.method, checked.transaction_id);
    w.error_code(refused.code(), refused.reason())
        .attr(attr::UNKNOWN_ATTRIBUTES, &unknown);
    w.finish_with_fingerprint()
}

/// The answer to a Binding request from `source` (RFC 8489 §7.3.1): XOR-MAPPED-ADDRESS, or
/// 420 with UNKNOWN-ATTRIBUTES. `None` for anything that is not a Binding request.
pub fn binding_response(checked: &Checked, source: SocketAddr) -> Option<Vec<u8>> {
    if checked.class != Class::Request || checked.method != BINDING {
        return None;
    }
    if !checked.unknown_required().is_empty() {
        return Some(unknown_attributes_answer(checked));
    }
    // No SOFTWARE: an answer anyone can draw carries nothing it need not (amplification,
    // reconnaissance).
    let mut w = Writer::new(Class::Success, BINDING, checked.transaction_id);
    w.xor_address(attr::XOR_MAPPED_ADDRESS, source);
    Some(w.finish_with_fingerprint())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::turn::stun::check;

    fn request(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut w = Writer::new(Class::Request, BINDING, [9; 12]);
        for (k, v) in attrs {
            w.attr(*k, v);
        }
        w.finish()
    }

    #[test]
    fn binding_answers_decode_with_stun_rs_and_check_with_us() {
        use stun_rs::attributes::stun::XorMappedAddress;
        use stun_rs::MessageDecoderBuilder;
        for source in ["203.0.113.7:40000", "[2001:db8::7]:40001"] {
            let source: SocketAddr = source.parse().unwrap();
            let req = request(&[(attr::PRIORITY, &[0, 0, 0, 1])]);
            let answer = binding_response(&check(&req).unwrap(), source).unwrap();
            let ours = check(&answer).unwrap();
            assert_eq!(
                (ours.class, ours.method, ours.transaction_id),
                (Class::Success, BINDING, [9; 12])
            );
            let (msg, n) = MessageDecoderBuilder::default()
                .build()
                .decode(&answer)
                .unwrap();
            assert_eq!(n, answer.len());
            let mapped = msg
                .get::<XorMappedAddress>()
                .unwrap()
                .as_xor_mapped_address()
                .unwrap();
            assert_eq!(*mapped.socket_address(), source);
        }
    }

    #[test]
    fn unknown_comprehension_required_attributes_get_420() {
        let req = request(&[(0x7777, b"x"), (0x0033, b"y")]);
        let answer =
            binding_response(&check(&req).unwrap(), "198.51.100.1:1".parse().unwrap()).unwrap();
        let c = check(&answer).unwrap();
        assert_eq!(c.class, Class::Error);
        let unknown = c.get(attr::UNKNOWN_ATTRIBUTES).unwrap();
        assert_eq!(
            &answer[unknown.start..unknown.start + unknown.len],
            &[0x77, 0x77, 0x00, 0x33]
        );
        let code = c.get(attr::ERROR_CODE).unwrap();
        assert_eq!(&answer[code.start + 2..code.start + 4], &[4, 20]);
    }

    #[test]
    fn integrity_written_here_verifies_there() {
        // A response signed with a long-term key checks as a well-formed message whose
        // MESSAGE-INTEGRITY covers exactly what RFC 8489 says.
        let key = crate::core::turn::auth::long_term_key("1800003600:alice", "sipedge.test", "pw");
        let mut w = Writer::new(Class::Success, 0x003, [1; 12]);
        w.attr(attr::LIFETIME, &600u32.to_be_bytes())
            .integrity(&key);
        let msg = w.finish_with_fingerprint();
        let c = check(&msg).unwrap();
        assert_eq!((c.class, c.method), (Class::Success, 0x003));
        let at = c.integrity_at.unwrap();
        let mi = c.get(attr::MESSAGE_INTEGRITY).unwrap();
        let mut covered = msg[..at].to_vec();
        covered[2..4].copy_from_slice(&u16::try_from(at + 24 - 20).unwrap().to_be_bytes());
        assert_eq!(
            crate::core::turn::auth::integrity(&key, &covered),
            msg[mi.start..mi.start + 20]
        );
        assert!(
            binding_response(&c, "198.51.100.1:1".parse().unwrap()).is_none(),
            "not a Binding request"
        );
    }
}
