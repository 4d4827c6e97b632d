//! RFC 7983 (§7) demultiplexing by the first byte: STUN, ChannelData, DTLS, RTP/RTCP.
//! Anything else is dropped and counted by the caller.

/// What a packet is, by its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// 0–3: STUN (the two leading bits of a STUN header are zero).
    Stun,
    /// 64–79: TURN ChannelData (RFC 8656 channels 0x4000–0x4FFF); on a TURN port also
    /// 80–127, the RFC 5766 channels up to 0x7FFF (see `channel::CHANNEL_MAX`).
    ChannelData,
    /// 20–63: DTLS.
    Dtls,
    /// 128–191: RTP or RTCP.
    Rtp,
    /// Anything else (16–19 ZRTP, 192–255: nothing here speaks them).
    Unknown,
}

pub fn classify(packet: &[u8]) -> PacketKind {
    match packet.first() {
        Some(0..=3) => PacketKind::Stun,
        Some(20..=63) => PacketKind::Dtls,
        Some(64..=127) => PacketKind::ChannelData,
        Some(128..=191) => PacketKind::Rtp,
        _ => PacketKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_ranges() {
        assert_eq!(classify(&[0x00, 0x01]), PacketKind::Stun);
        assert_eq!(classify(&[0x03]), PacketKind::Stun);
        assert_eq!(classify(&[0x40, 0x00]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x4f]), PacketKind::ChannelData);
        assert_eq!(
            classify(&[0x7f]),
            PacketKind::ChannelData,
            "RFC 5766 channels"
        );
        assert_eq!(classify(&[0x16]), PacketKind::Dtls);
        assert_eq!(classify(&[0x80]), PacketKind::Rtp);
        assert_eq!(classify(&[0x10]), PacketKind::Unknown);
        assert_eq!(classify(&[]), PacketKind::Unknown);
    }
}
