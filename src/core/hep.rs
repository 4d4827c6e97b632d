//! HEP version 3 (the Homer Encapsulation Protocol, also called EEP), the format SIP capture
//! servers take copies of SIP in: Homer, and sngrep and Wireshark read it too. One message
//! is the magic `HEP3`, its total length (16 bits, big-endian), then chunks, each a vendor
//! id (0: generic), a type, its own length with this 6-byte header, and the value; integers
//! big-endian, addresses in network order.
//!
//! Here: the encoder of one captured SIP message ([`Captured`] → bytes), with the chunks
//! Homer files a message by (addresses, ports, transport, time to the microsecond, the
//! capture agent's id, the Call-ID to correlate by, the payload). What is captured and where
//! it goes is the shell's; nothing here reads a clock or a socket.

use std::net::{IpAddr, SocketAddr};

/// The generic chunk types of HEP3 used here (vendor 0).
pub mod chunk {
    pub const IP_FAMILY: u16 = 0x0001;
    pub const IP_PROTOCOL: u16 = 0x0002;
    pub const IPV4_SRC: u16 = 0x0003;
    pub const IPV4_DST: u16 = 0x0004;
    pub const IPV6_SRC: u16 = 0x0005;
    pub const IPV6_DST: u16 = 0x0006;
    pub const SRC_PORT: u16 = 0x0007;
    pub const DST_PORT: u16 = 0x0008;
    pub const TIME_SECONDS: u16 = 0x0009;
    pub const TIME_MICROSECONDS: u16 = 0x000a;
    pub const PROTOCOL_TYPE: u16 = 0x000b;
    pub const CAPTURE_AGENT_ID: u16 = 0x000c;
    pub const AUTH_KEY: u16 = 0x000e;
    pub const PAYLOAD: u16 = 0x000f;
    pub const CORRELATION_ID: u16 = 0x0011;
}

/// `PROTOCOL_TYPE` of SIP.
pub const PROTOCOL_SIP: u8 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const CHUNK_HEADER: usize = 6;
const MESSAGE_HEADER: usize = 6;

/// The transport a message crossed. TLS is carried as TCP (HEP names IP protocols: the
/// payload is the plain SIP the edge read or wrote inside the TLS session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    fn ip_protocol(self) -> u8 {
        match self {
            Transport::Udp => 17,
            Transport::Tcp | Transport::Tls => 6,
        }
    }
}

/// One SIP message as it crossed the edge.
#[derive(Clone, Copy, Debug)]
pub struct Captured<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
    /// When, in microseconds since the Unix epoch.
    pub unix_micros: u64,
    /// The capture agent's id (Homer's `captureid`: which edge).
    pub agent_id: u32,
    /// The collector's password, if it wants one (HEP sends it in the clear).
    pub auth_key: Option<&'a str>,
    /// What Homer correlates by: the Call-ID ([`call_id`]).
    pub correlation_id: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TooLong {
    /// The whole would exceed HEP3's 65 535 bytes.
    Message,
}

/// Encodes `c` as one HEP3 message appended to `out` (nothing appended on error).
pub fn encode(c: &Captured<'_>, out: &mut Vec<u8>) -> Result<(), TooLong> {
    let start = out.len();
    out.extend_from_slice(b"HEP3\0\0");
    // Mixed families (not on one socket, but): both as IPv6, IPv4 mapped. Fixed arrays: no
    // allocation per captured message.
    let (family, src, dst, address_len) = match (c.src.ip(), c.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (AF_INET, v6(s.into()), v6(d.into()), 4),
        (s, d) => (AF_INET6, v6(s), v6(d), 16),
    };
    // An IPv4 address is the last four bytes of its mapped IPv6 form.
    let skip = 16 - address_len;
    // The order Kamailio, captagent and hep-c send, which some receivers take as a fixed
    // layout rather than walking the chunks (sngrep 1.x reads the first eight, then the
    // addresses, the key, and the payload by position): the correlation id goes after the
    // payload, where such a reader does not look and a generic one (Homer) still finds it.
    put(out, chunk::IP_FAMILY, &[family]);
    put(out, chunk::IP_PROTOCOL, &[c.transport.ip_protocol()]);
    put(out, chunk::SRC_PORT, &c.src.port().to_be_bytes());
    put(out, chunk::DST_PORT, &c.dst.port().to_be_bytes());
    let seconds = u32::try_from(c.unix_micros / 1_000_000).unwrap_or(u32::MAX);
    let micros = u32::try_from(c.unix_micros % 1_000_000).unwrap_or(0);
    put(out, chunk::TIME_SECONDS, &seconds.to_be_bytes());
    put(out, chunk::TIME_MICROSECONDS, &micros.to_be_bytes());
    put(out, chunk::PROTOCOL_TYPE, &[PROTOCOL_SIP]);
    put(out, chunk::CAPTURE_AGENT_ID, &c.agent_id.to_be_bytes());
    let (src_kind, dst_kind) = if family == AF_INET {
        (chunk::IPV4_SRC, chunk::IPV4_DST)
    } else {
        (chunk::IPV6_SRC, chunk::IPV6_DST)
    };
    put(out, src_kind, src.get(skip..).unwrap_or_default());
    put(out, dst_kind, dst.get(skip..).unwrap_or_default());
    if let Some(key) = c.auth_key {
        put(out, chunk::AUTH_KEY, key.as_bytes());
    }
    put(out, chunk::PAYLOAD, c.payload);
    if let Some(id) = c.correlation_id {
        put(out, chunk::CORRELATION_ID, id);
    }
    let total = out.len() - start;
    let Ok(total16) = u16::try_from(total) else {
        out.truncate(start);
        return Err(TooLong::Message);
    };
    if let Some(len) = out.get_mut(start + 4..start + MESSAGE_HEADER) {
        len.copy_from_slice(&total16.to_be_bytes());
    }
    Ok(())
}

/// One chunk; a value too long for a chunk makes the message too long as well, which
/// [`encode`] then refuses as a whole.
fn put(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(CHUNK_HEADER + value.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

/// The longest Call-ID taken as a correlation id (longer ones are not a real client's).
pub const MAX_CORRELATION_ID: usize = 256;

/// The Call-ID of a SIP message as it crossed the wire (`Call-ID` or its compact form `i`,
/// any case), for correlation; `None` when there is none or it is longer than
/// [`MAX_CORRELATION_ID`]. Reads any bytes: a captured message may be one the edge refused.
pub fn call_id(message: &[u8]) -> Option<&[u8]> {
    // Line by line (SIMD search for the line ends), stopping at the blank line; the first
    // line is the request or status line. Only lines starting as a Call-ID can are looked at.
    let mut rest = message;
    let mut first = true;
    loop {
        let end = memchr::memchr(b'\n', rest);
        let line = rest.get(..end.unwrap_or(rest.len())).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && !first {
            return None;
        }
        if !first && matches!(line.first(), Some(b'c' | b'C' | b'i' | b'I')) {
            if let Some(value) = call_id_value(line) {
                return Some(value);
            }
        }
        first = false;
        rest = rest.get(end? + 1..)?;
    }
}

/// The value of a `Call-ID` (or `i`) header line, if that is what the line is.
fn call_id_value(line: &[u8]) -> Option<&[u8]> {
    let colon = memchr::memchr(b':', line)?;
    let (name, value) = line.split_at(colon);
    let name = name.trim_ascii_end();
    let is_call_id = name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i");
    let value = value.get(1..)?.trim_ascii();
    (is_call_id && !value.is_empty() && value.len() <= MAX_CORRELATION_ID).then_some(value)
}

/// A message without its body: up to and including the blank line that ends the header
/// block (the whole message when there is none). What `[capture] bodies = false` copies.
pub fn header_block(message: &[u8]) -> &[u8] {
    match memchr::memmem::find(message, b"\r\n\r\n") {
        Some(at) => message.get(..at + 4).unwrap_or(message),
        None => message,
    }
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// The chunks of one HEP3 message, read independently of the encoder: (vendor, type,
    /// value), checking every length on the way.
    fn chunks(msg: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
        assert_eq!(&msg[..4], b"HEP3");
        assert_eq!(usize::from(u16::from_be_bytes([msg[4], msg[5]])), msg.len());
        let mut at = 6;
        let mut out = Vec::new();
        while at < msg.len() {
            let vendor = u16::from_be_bytes([msg[at], msg[at + 1]]);
            let kind = u16::from_be_bytes([msg[at + 2], msg[at + 3]]);
            let len = usize::from(u16::from_be_bytes([msg[at + 4], msg[at + 5]]));
            assert!(
                len >= 6 && at + len <= msg.len(),
                "chunk {kind:#x} length {len}"
            );
            out.push((vendor, kind, msg[at + 6..at + len].to_vec()));
            at += len;
        }
        assert_eq!(at, msg.len());
        out
    }

    fn invite() -> &'static [u8] {
        b"INVITE sip:bob@b.test SIP/2.0\r\nCall-ID: abc@1\r\nContent-Length: 0\r\n\r\n"
    }

    #[test]
    fn an_ipv4_tls_message_has_the_chunks_homer_files_it_by() {
        let c = Captured {
            src: "203.0.113.7:50432".parse().unwrap(),
            dst: "192.0.2.1:5061".parse().unwrap(),
            transport: Transport::Tls,
            unix_micros: 1_800_000_000_123_456,
            agent_id: 2001,
            auth_key: None,
            correlation_id: Some(b"abc@1"),
            payload: invite(),
        };
        let mut out = vec![0xee]; // appended, not overwritten
        encode(&c, &mut out).unwrap();
        assert_eq!(out[0], 0xee);
        let got = chunks(&out[1..]);
        // In the order fixed-layout readers expect (see `encode`).
        let want: Vec<(u16, u16, Vec<u8>)> = vec![
            (0, chunk::IP_FAMILY, vec![2]),
            (0, chunk::IP_PROTOCOL, vec![6]),
            (0, chunk::SRC_PORT, 50432u16.to_be_bytes().to_vec()),
            (0, chunk::DST_PORT, 5061u16.to_be_bytes().to_vec()),
            (
                0,
                chunk::TIME_SECONDS,
                1_800_000_000u32.to_be_bytes().to_vec(),
            ),
            (
                0,
                chunk::TIME_MICROSECONDS,
                123_456u32.to_be_bytes().to_vec(),
            ),
            (0, chunk::PROTOCOL_TYPE, vec![1]),
            (0, chunk::CAPTURE_AGENT_ID, 2001u32.to_be_bytes().to_vec()),
            (0, chunk::IPV4_SRC, vec![203, 0, 113, 7]),
            (0, chunk::IPV4_DST, vec![192, 0, 2, 1]),
            (0, chunk::PAYLOAD, invite().to_vec()),
            (0, chunk::CORRELATION_ID, b"abc@1".to_vec()),
        ];
        assert_eq!(got, want);
        // The chunk types are HEP3's numbers (the spec's table), not just ours agreeing.
        assert_eq!(
            [
                chunk::PAYLOAD,
                chunk::CORRELATION_ID,
                chunk::CAPTURE_AGENT_ID
            ],
            [15, 17, 12]
        );
    }

    #[test]
    fn ipv6_udp_with_a_key_and_mixed_families_as_mapped_ipv6() {
        let c = Captured {
            src: "[2001:db8::7]:5060".parse().unwrap(),
            dst: "192.0.2.1:5060".parse().unwrap(),
            transport: Transport::Udp,
            unix_micros: 5,
            agent_id: 1,
            auth_key: Some("secret"),
            correlation_id: None,
            payload: b"OPTIONS sip:a SIP/2.0\r\n\r\n",
        };
        let mut out = Vec::new();
        encode(&c, &mut out).unwrap();
        let got = chunks(&out);
        let value = |kind| got.iter().find(|(_, k, _)| *k == kind).map(|c| c.2.clone());
        assert_eq!(value(chunk::IP_FAMILY), Some(vec![10]));
        assert_eq!(value(chunk::IP_PROTOCOL), Some(vec![17]));
        assert_eq!(value(chunk::IPV6_SRC).unwrap().len(), 16);
        let dst: [u8; 16] = value(chunk::IPV6_DST).unwrap().try_into().unwrap();
        assert_eq!(
            std::net::Ipv6Addr::from(dst).to_ipv4_mapped(),
            Some([192, 0, 2, 1].into())
        );
        assert_eq!(value(chunk::AUTH_KEY), Some(b"secret".to_vec()));
        assert_eq!(value(chunk::CORRELATION_ID), None);
        assert_eq!(
            value(chunk::TIME_MICROSECONDS),
            Some(5u32.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn the_call_id_is_found_in_either_form_and_any_case_and_only_in_the_headers() {
        let msg =
            |headers: &str| format!("MESSAGE sip:b SIP/2.0\r\n{headers}\r\nbody: Call-ID: no\r\n");
        let id = |text: String| call_id(text.as_bytes()).map(|v| v.to_vec());
        assert_eq!(id(msg("Call-ID: abc@1\r\n")), Some(b"abc@1".to_vec()));
        assert_eq!(
            id(msg("From: x\r\ncall-id:\tabc \r\n")),
            Some(b"abc".to_vec())
        );
        assert_eq!(id(msg("i : short@h\r\n")), Some(b"short@h".to_vec()));
        assert_eq!(id(msg("X-Call-ID: not\r\n")), None);
        assert_eq!(id(msg("Call-ID:\r\n")), None);
        let long = "c".repeat(MAX_CORRELATION_ID + 1);
        assert_eq!(id(msg(&format!("Call-ID: {long}\r\n"))), None);
        // Neither the request line nor the body.
        assert_eq!(call_id(b"Call-ID: x SIP/2.0\r\n\r\n"), None);
        assert_eq!(call_id(b""), None);
        assert_eq!(call_id(b"\n\n:"), None);
    }

    #[test]
    fn the_header_block_ends_at_the_blank_line() {
        let m = b"INVITE sip:b SIP/2.0\r\nContent-Length: 4\r\n\r\nv=0\n";
        assert_eq!(header_block(m), &m[..m.len() - 4]);
        assert_eq!(header_block(b"no end"), b"no end");
    }

    #[test]
    fn a_message_beyond_65535_bytes_is_refused_whole() {
        let big = vec![b'x'; 65_535];
        let c = Captured {
            src: "192.0.2.1:1".parse().unwrap(),
            dst: "192.0.2.2:2".parse().unwrap(),
            transport: Transport::Tcp,
            unix_micros: 0,
            agent_id: 0,
            auth_key: None,
            correlation_id: None,
            payload: &big,
        };
        let mut out = vec![1, 2, 3];
        assert_eq!(encode(&c, &mut out), Err(TooLong::Message));
        assert_eq!(out, [1, 2, 3], "nothing partial left behind");
        // The largest payload that fits: 65 535 minus the header and the other chunks.
        let mut probe = Vec::new();
        encode(&Captured { payload: b"", ..c }, &mut probe).unwrap();
        let room = 65_535 - probe.len();
        let fits = vec![b'y'; room];
        let mut out = Vec::new();
        encode(
            &Captured {
                payload: &fits,
                ..c
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 65_535);
        assert_eq!(chunks(&out).last().unwrap().2.len(), room);
    }
}
