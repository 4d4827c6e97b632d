//! TURN ChannelData framing (RFC 8656 §12.4): a 4-byte header (channel number, length)
//! then the data; over stream transports padded to a multiple of 4. This is the relay's hot
//! path: parsing borrows, encoding writes a header in place; nothing allocates.

/// The channel numbers accepted. RFC 8656 §12 narrowed them to 0x4000–0x4FFF, but RFC 5766
/// clients (coturn's `turnutils_uclient` among them) still pick up to 0x7FFF, and the issue
/// is that they must work; on a TURN port only STUN and ChannelData arrive, so the wider
/// range is unambiguous there. Below 0x4000 is STUN; 0x8000 and up never are channels.
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x7FFF;
pub const HEADER_LEN: usize = 4;

/// A parsed ChannelData message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
    /// Bytes of the input this message used (header, data and, on streams, padding).
    pub consumed: usize,
}

/// Why a ChannelData message is refused (dropped silently: there is no error reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// Fewer than 4 bytes, or (streams) the data has not all arrived yet.
    Incomplete,
    /// Channel number outside 0x4000–0x7FFF.
    BadChannel,
    /// Datagram: the length field says more than the datagram holds.
    Truncated,
    /// Datagram: bytes after the data beyond the allowed padding.
    Trailing,
}

/// Parses one ChannelData message. On datagrams (`stream == false`) the whole datagram must
/// be the message (padding of up to 3 bytes allowed, RFC 8656 §12.5); on streams the
/// message is followed by padding to a multiple of 4 and the rest of the buffer is the next
/// message.
pub fn parse(buf: &[u8], stream: bool) -> Result<ChannelData<'_>, ChannelError> {
    let &[c0, c1, l0, l1] = buf
        .first_chunk::<HEADER_LEN>()
        .ok_or(ChannelError::Incomplete)?;
    let channel = u16::from_be_bytes([c0, c1]);
    if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) {
        return Err(ChannelError::BadChannel);
    }
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    let end = HEADER_LEN + len;
    let data = match buf.get(HEADER_LEN..end) {
        Some(d) => d,
        None if stream => return Err(ChannelError::Incomplete),
        None => return Err(ChannelError::Truncated),
    };
    let padded = end.next_multiple_of(4);
    let consumed = if stream {
        if buf.len() < padded {
            return Err(ChannelError::Incomplete);
        }
        padded
    } else {
        if buf.len() > padded {
            return Err(ChannelError::Trailing);
        }
        buf.len()
    };
    Ok(ChannelData {
        channel,
        data,
        consumed,
    })
}

/// Writes the 4-byte header for `len` bytes of data on `channel` into `out`.
pub fn write_header(out: &mut [u8; HEADER_LEN], channel: u16, len: u16) {
    let [c0, c1] = channel.to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    *out = [c0, c1, l0, l1];
}

/// Padding to add after `len` bytes of data on a stream transport.
pub fn stream_padding(len: usize) -> usize {
    (HEADER_LEN + len).next_multiple_of(4) - HEADER_LEN - len
}

/// A whole ChannelData message in a buffer of its own: `header`, `data`, and on a stream
/// transport the padding to a multiple of 4 (RFC 8656 §12.5).
pub fn framed(header: &[u8; HEADER_LEN], data: &[u8], stream: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + data.len() + 3);
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    if stream {
        out.resize(out.len() + stream_padding(data.len()), 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(channel: u16, data: &[u8]) -> Vec<u8> {
        let mut h = [0u8; 4];
        write_header(&mut h, channel, data.len() as u16);
        let mut out = h.to_vec();
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn datagrams() {
        let f = frame(0x4001, b"hello");
        assert_eq!(
            parse(&f, false),
            Ok(ChannelData {
                channel: 0x4001,
                data: b"hello",
                consumed: 9
            })
        );
        let mut padded = f.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        assert_eq!(parse(&padded, false).unwrap().data, b"hello");
        padded.push(0);
        assert_eq!(parse(&padded, false), Err(ChannelError::Trailing));
        assert_eq!(parse(&f[..7], false), Err(ChannelError::Truncated));
        assert_eq!(
            parse(&frame(0x3fff, b"x"), false),
            Err(ChannelError::BadChannel)
        );
        assert_eq!(parse(&frame(0x5000, b"x"), false).unwrap().channel, 0x5000);
        assert_eq!(parse(&[0x40], false), Err(ChannelError::Incomplete));
        assert_eq!(parse(&frame(0x4fff, b""), false).unwrap().data, b"");
    }

    #[test]
    fn streams_need_padding_and_leave_the_rest() {
        let mut buf = frame(0x4000, b"hello");
        assert_eq!(
            parse(&buf, true),
            Err(ChannelError::Incomplete),
            "padding not yet arrived"
        );
        buf.extend_from_slice(&[0; 3]);
        buf.extend_from_slice(&frame(0x4002, b"next"));
        let first = parse(&buf, true).unwrap();
        assert_eq!((first.data, first.consumed), (&b"hello"[..], 12));
        let second = parse(&buf[first.consumed..], true).unwrap();
        assert_eq!((second.channel, second.data), (0x4002, &b"next"[..]));
        assert_eq!(stream_padding(5), 3);
        assert_eq!(stream_padding(4), 0);
        assert_eq!(stream_padding(172), 0);
        let mut h = [0u8; HEADER_LEN];
        write_header(&mut h, 0x4001, 5);
        assert_eq!(framed(&h, b"hello", true).len(), 12);
        assert_eq!(framed(&h, b"hello", false).len(), 9);
        assert_eq!(
            parse(&framed(&h, b"hello", true), true).map(|m| m.data),
            Ok(&b"hello"[..])
        );
    }
}

/// The length of the next complete message on a TURN-over-TCP stream (RFC 8656 §12.5): a
/// STUN message (header length + 20) or ChannelData (padded to 4). `Ok(None)` until enough
/// has arrived; `Err` when the stream is not TURN (the connection is then closed).
pub fn stream_frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, ChannelError> {
    let Some(&[b0, _, b2, b3]) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([b2, b3]));
    let total = match b0 {
        0..=3 => 20 + len,
        0x40..=0x7f => (HEADER_LEN + len).next_multiple_of(4),
        _ => return Err(ChannelError::BadChannel),
    };
    if total > max {
        return Err(ChannelError::Truncated);
    }
    Ok((buf.len() >= total).then_some(total))
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    #[test]
    fn stream_frames() {
        assert_eq!(stream_frame_len(&[0, 1, 0], 100), Ok(None));
        assert_eq!(stream_frame_len(&[0, 1, 0, 4, 0x21, 0x12], 100), Ok(None));
        let stun = [&[0u8, 1, 0, 4][..], &[0; 16], &[0; 4]].concat();
        assert_eq!(stream_frame_len(&stun, 100), Ok(Some(24)));
        assert_eq!(
            stream_frame_len(&[0x40, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0], 100),
            Ok(None)
        );
        assert_eq!(
            stream_frame_len(&[0x40, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0], 100),
            Ok(Some(12))
        );
        assert_eq!(
            stream_frame_len(&[0x16, 3, 1, 0], 100),
            Err(ChannelError::BadChannel)
        );
        assert_eq!(
            stream_frame_len(&[0, 1, 0xff, 0xfc], 100),
            Err(ChannelError::Truncated)
        );
    }
}
