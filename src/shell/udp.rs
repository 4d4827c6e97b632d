//! Batched UDP I/O for the relay (quinn-udp behind tokio readiness): `recvmmsg` reads many
//! datagrams per system call, GRO lets the kernel hand over a train of equal-sized datagrams
//! from one sender as one buffer, and GSO sends such a train to one destination in one call.
//! Each is used where the kernel offers it; quinn-udp falls back to one datagram per call
//! where it does not.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The largest UDP payload, and the room a GRO train can take (the kernel caps a
/// coalesced buffer at 64 KiB).
pub const MAX_DATAGRAM: usize = 65_535;

/// Datagrams read per system call on a client-facing socket (where every client's media
/// arrives) and on a relayed socket (one allocation's peers).
pub const CLIENT_BATCH: usize = if quinn_udp::BATCH_SIZE < 16 {
    quinn_udp::BATCH_SIZE
} else {
    16
};

/// A UDP socket with batched receive and segmented send.
pub struct BatchSocket {
    io: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
}

impl BatchSocket {
    pub fn new(io: UdpSocket) -> io::Result<BatchSocket> {
        let state = UdpSocketState::new((&io).into())?;
        let local = io.local_addr()?;
        // quinn-udp turns path-MTU probing on (DF set, never fragment locally), which QUIC
        // wants. A relay forwards what it is given and RFC 8656 §14 sets DF only when the
        // client asks, so IPv4 goes back to the kernel's default.
        if local.is_ipv4() {
            use rustix::net::sockopt::{set_ip_mtu_discover, Ipv4PathMtuDiscovery};
            set_ip_mtu_discover(&io, Ipv4PathMtuDiscovery::WANT)?;
        }
        Ok(BatchSocket { io, state, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How many datagrams one send may carry as segments (1 without GSO).
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Reads one batch: `meta[i]` describes `bufs[i]`; a buffer holds `len` bytes, which
    /// are several datagrams of `stride` bytes (the last may be shorter) when GRO merged
    /// a train.
    pub async fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        loop {
            self.io.readable().await?;
            match self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    /// Sends `contents` to `to`: one datagram, or segments of `segment` bytes (GSO; the
    /// last may be shorter). Waits while the socket's buffer is full.
    pub async fn send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        loop {
            self.io.writable().await?;
            match self.io.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.io).into(), &transmit)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }
}

impl BatchSocket {
    /// Sends like [`BatchSocket::send`] without waiting (from a relay worker's thread): a
    /// full socket buffer is an error and the datagram is dropped.
    pub fn try_send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        self.state.try_send((&self.io).into(), &transmit)
    }
}

/// The datagrams in a received buffer: GRO trains split at their stride.
pub fn datagrams(buf: &[u8], meta: &RecvMeta) -> impl Iterator<Item = std::ops::Range<usize>> {
    let len = meta.len.min(buf.len());
    let stride = if meta.stride == 0 { len } else { meta.stride };
    (0..len)
        .step_by(stride.max(1))
        .map(move |start| start..(start + stride).min(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;

    fn meta(len: usize, stride: usize) -> RecvMeta {
        let mut m = RecvMeta::default();
        m.len = len;
        m.stride = stride;
        m
    }

    #[test]
    fn gro_trains_split_at_their_stride() {
        let buf = [0u8; 100];
        let split: Vec<_> = datagrams(&buf, &meta(10, 4)).collect();
        assert_eq!(split, [0..4, 4..8, 8..10]);
        let single: Vec<_> = datagrams(&buf, &meta(7, 7)).collect();
        assert_eq!(single, vec![Range { start: 0, end: 7 }]);
        assert_eq!(datagrams(&buf, &meta(0, 0)).count(), 0);
        // A length beyond the buffer is clamped, and a zero stride is one datagram.
        let clamped: Vec<_> = datagrams(&buf, &meta(500, 0)).collect();
        assert_eq!(clamped, vec![Range { start: 0, end: 100 }]);
    }

    #[tokio::test]
    async fn a_batch_and_a_segmented_send_arrive_as_datagrams() {
        let a = BatchSocket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let b = BatchSocket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        // Three 172-byte segments in one send (GSO where offered, else one by one by
        // quinn-udp), then a lone datagram.
        let train: Vec<u8> = (0..3u8).flat_map(|i| [i; 172]).collect();
        a.send(b.local_addr(), &train, Some(172)).await.unwrap();
        a.send(b.local_addr(), b"last", None).await.unwrap();
        let mut storage = vec![0u8; 4 * MAX_DATAGRAM];
        let mut bufs: Vec<IoSliceMut<'_>> = storage
            .chunks_mut(MAX_DATAGRAM)
            .map(IoSliceMut::new)
            .collect();
        let mut metas = [RecvMeta::default(); 4];
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < 4 {
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                b.recv(&mut bufs, &mut metas),
            )
            .await
            .unwrap()
            .unwrap();
            for (buf, m) in bufs.iter().zip(&metas).take(n) {
                assert_eq!(m.addr, a.local_addr());
                for r in datagrams(buf, m) {
                    got.push(buf[r].to_vec());
                }
            }
        }
        assert_eq!(got[0], [0u8; 172]);
        assert_eq!(got[1], [1u8; 172]);
        assert_eq!(got[2], [2u8; 172]);
        assert_eq!(got[3], b"last");
    }
}
