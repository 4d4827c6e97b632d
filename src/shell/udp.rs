//! Batched UDP I/O for the relay (quinn-udp on non-blocking sockets the relay workers
//! watch): `recvmmsg` reads many datagrams per system call, GRO lets the kernel hand over a
//! train of equal-sized datagrams from one sender as one buffer, and GSO sends such a train
//! to one destination in one call. Each is used where the kernel offers it; quinn-udp falls
//! back to one datagram per call where it does not. Nothing here waits: a read with nothing
//! to read and a send into a full buffer return `WouldBlock` (the packet is dropped: late
//! media is useless, and a queue would be memory a peer controls).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

/// The largest UDP payload, and the room a GRO train can take (the kernel caps a
/// coalesced buffer at 64 KiB).
pub const MAX_DATAGRAM: usize = 65_535;

/// Datagrams read per system call on a client-facing socket (where every client's media
/// arrives).
pub const CLIENT_BATCH: usize = if quinn_udp::BATCH_SIZE < 16 {
    quinn_udp::BATCH_SIZE
} else {
    16
};

/// How a socket is bound.
#[derive(Clone, Debug, Default)]
pub struct Bind {
    /// Several sockets on one address, the kernel spreading senders over them by their
    /// address (`SO_REUSEPORT`: one per relay worker).
    pub reuse_port: bool,
    /// The receive buffer asked for (the kernel caps it at `net.core.rmem_max`).
    pub recv_buffer: Option<usize>,
    /// Only what comes in by this interface (`SO_BINDTODEVICE`): a listener that grants a
    /// zone, which a host routing to its address through another interface must not get.
    pub device: Option<String>,
}

/// A non-blocking UDP socket with batched receive and segmented send.
pub struct UdpPort {
    io: std::net::UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
}

impl UdpPort {
    /// Binds `addr` (IPv6 only when the address is).
    pub fn bind(addr: SocketAddr, how: Bind) -> io::Result<UdpPort> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        if how.reuse_port {
            socket.set_reuse_port(true)?;
        }
        if let Some(size) = how.recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        if let Some(device) = &how.device {
            super::listen::bind_device(&socket, addr, device)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let io: std::net::UdpSocket = socket.into();
        let state = UdpSocketState::new((&io).into())?;
        // quinn-udp turns path-MTU probing on (DF set, never fragment locally), which QUIC
        // wants. A relay forwards what it is given and RFC 8656 §14 sets DF only when the
        // client asks, so IPv4 goes back to the kernel's default.
        if addr.is_ipv4() {
            use rustix::net::sockopt::{set_ip_mtu_discover, Ipv4PathMtuDiscovery};
            set_ip_mtu_discover(&io, Ipv4PathMtuDiscovery::WANT)?;
        }
        // quinn-udp asks the kernel for a receive timestamp on every datagram, which the
        // relay never reads: a control message per datagram, and while any socket of the
        // host asks, the kernel stamps every packet it receives (measured: 50 k pps
        // relayed, median 189 k packets per CPU-second with it, 214 k without).
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(&io, sockopt::ReceiveTimestampns, &false).map_err(io::Error::from)?;
        // Nor the destination address and the TOS / traffic class byte quinn-udp asks for:
        // every listener and relayed socket is bound to one address (the topology refuses
        // wildcards), and the relay sends Not-ECT (RFC 8656 §14's alternate behaviour for
        // ECN), so neither is read. GRO stays: a train of datagrams is one read.
        if addr.is_ipv4() {
            setsockopt(&io, sockopt::Ipv4PacketInfo, &false).map_err(io::Error::from)?;
            setsockopt(&io, sockopt::IpRecvTos, &false).map_err(io::Error::from)?;
        } else {
            setsockopt(&io, sockopt::Ipv6RecvPacketInfo, &false).map_err(io::Error::from)?;
            setsockopt(&io, sockopt::Ipv6RecvTClass, &false).map_err(io::Error::from)?;
        }
        let local = io.local_addr()?;
        Ok(UdpPort { io, state, local })
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
    /// a train. `WouldBlock` when there is nothing to read.
    pub fn try_recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.state.recv((&self.io).into(), bufs, meta)
    }

    /// Sends `contents` to `to`: one datagram, or segments of `segment` bytes (GSO; the
    /// last may be shorter). `WouldBlock` when the socket's buffer is full.
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

/// Datagrams sent by one [`UdpPort::send_many`] call at the most.
pub const SEND_BATCH: usize = 32;

impl UdpPort {
    /// Sends each `(destination, contents)` as its own datagram in as few system calls as
    /// the kernel takes (`sendmmsg`), without waiting; at most [`SEND_BATCH`] of them.
    /// Returns how many were sent: one the kernel refuses is skipped, and those after a
    /// full buffer are dropped.
    pub fn send_many(&self, datagrams: &[(SocketAddr, &[u8])]) -> usize {
        use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
        let n = datagrams.len().min(SEND_BATCH);
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        // On the stack: nothing is allocated per datagram or per call.
        let addrs: [SocketAddrAny; SEND_BATCH] = std::array::from_fn(|i| {
            SocketAddrAny::from(datagrams.get(i).map_or(unspecified, |d| d.0))
        });
        let iovs: [[io::IoSlice<'_>; 1]; SEND_BATCH] =
            std::array::from_fn(|i| [io::IoSlice::new(datagrams.get(i).map_or(&[][..], |d| d.1))]);
        let mut controls: [SendAncillaryBuffer<'_, '_, '_>; SEND_BATCH] =
            std::array::from_fn(|_| SendAncillaryBuffer::default());
        let mut slots = addrs.iter().zip(iovs.iter()).zip(controls.iter_mut());
        let mut headers: [MMsgHdr<'_>; SEND_BATCH] = std::array::from_fn(|_| match slots.next() {
            Some(((addr, iov), control)) => MMsgHdr::new_with_addr(addr, iov, control),
            // SEND_BATCH slots zipped for SEND_BATCH headers.
            None => unreachable!("one slot per header"),
        });
        let (mut at, mut sent) = (0, 0);
        while at < n {
            let Some(rest) = headers.get_mut(at..n) else {
                break;
            };
            match rustix::net::sendmmsg(self, rest, SendFlags::DONTWAIT) {
                Ok(k) if k > 0 => {
                    at += k;
                    sent += k;
                }
                // The buffer is full: the rest is dropped.
                Err(rustix::io::Errno::AGAIN) => break,
                // This one could not go (its destination, say): the next ones still may.
                Ok(_) | Err(_) => at += 1,
            }
        }
        sent
    }
}

impl AsFd for UdpPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
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

    #[test]
    fn a_port_asks_for_no_control_messages_but_gro() {
        use nix::sys::socket::{getsockopt, sockopt};
        let a = UdpPort::bind("127.0.0.1:0".parse().unwrap(), Bind::default()).unwrap();
        assert!(!getsockopt(&a.io, sockopt::ReceiveTimestampns).unwrap());
        assert!(!getsockopt(&a.io, sockopt::Ipv4PacketInfo).unwrap());
        assert!(!getsockopt(&a.io, sockopt::IpRecvTos).unwrap());
        assert!(getsockopt(&a.io, sockopt::UdpGroSegment).unwrap());
        let v6 = UdpPort::bind("[::1]:0".parse().unwrap(), Bind::default()).unwrap();
        assert!(!getsockopt(&v6.io, sockopt::Ipv6RecvPacketInfo).unwrap());
        assert!(!getsockopt(&v6.io, sockopt::Ipv6RecvTClass).unwrap());
        assert!(!getsockopt(&v6.io, sockopt::ReceiveTimestampns).unwrap());
        assert!(getsockopt(&v6.io, sockopt::UdpGroSegment).unwrap());
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.send_to(b"x", a.local_addr()).unwrap();
        let mut storage = [0u8; MAX_DATAGRAM];
        let mut bufs = [IoSliceMut::new(&mut storage)];
        let mut metas = [RecvMeta::default()];
        for _ in 0..1000 {
            match a.try_recv(&mut bufs, &mut metas) {
                Ok(1) => break,
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        assert_eq!(metas[0].len, 1);
        assert_eq!(metas[0].timestamp, None);
        assert_eq!(metas[0].dst_ip, None);
    }

    #[test]
    fn a_batch_and_a_segmented_send_arrive_as_datagrams() {
        let a = UdpPort::bind("127.0.0.1:0".parse().unwrap(), Bind::default()).unwrap();
        let b = UdpPort::bind(
            "127.0.0.1:0".parse().unwrap(),
            Bind {
                reuse_port: true,
                recv_buffer: Some(1 << 20),
                device: None,
            },
        )
        .unwrap();
        // Three 172-byte segments in one send (GSO where offered, else one by one by
        // quinn-udp), then a lone datagram.
        let train: Vec<u8> = (0..3u8).flat_map(|i| [i; 172]).collect();
        a.try_send(b.local_addr(), &train, Some(172)).unwrap();
        a.try_send(b.local_addr(), b"last", None).unwrap();
        let mut storage = vec![0u8; 4 * MAX_DATAGRAM];
        let mut bufs: Vec<IoSliceMut<'_>> = storage
            .chunks_mut(MAX_DATAGRAM)
            .map(IoSliceMut::new)
            .collect();
        let mut metas = [RecvMeta::default(); 4];
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut waits = 0;
        while got.len() < 4 {
            assert!(waits < 1000, "got {} of 4 in 5 s", got.len());
            let n = match b.try_recv(&mut bufs, &mut metas) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    waits += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                Err(e) => panic!("{e}"),
            };
            for (buf, meta) in bufs.iter().zip(&metas).take(n) {
                for r in datagrams(buf, meta) {
                    got.push(buf[r].to_vec());
                }
            }
        }
        assert_eq!(got.len(), 4);
        for (i, d) in got.iter().take(3).enumerate() {
            assert_eq!(d, &vec![i as u8; 172]);
        }
        assert_eq!(got[3], b"last");
    }

    #[test]
    fn many_datagrams_to_many_destinations_go_in_one_call_and_a_refused_one_is_skipped() {
        let a = UdpPort::bind("127.0.0.1:0".parse().unwrap(), Bind::default()).unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&b, &c] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
        }
        let (to_b, to_c) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        // An IPv6 destination from an IPv4 socket: the kernel refuses that one.
        let refused: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let datagrams: Vec<(SocketAddr, &[u8])> = vec![
            (to_b, b"one"),
            (to_c, b"two"),
            (refused, b"lost"),
            (to_b, b"three"),
        ];
        assert_eq!(a.send_many(&datagrams), 3);
        let mut buf = [0u8; 64];
        let mut read = |s: &std::net::UdpSocket| {
            let n = s.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        };
        assert_eq!(read(&b), b"one");
        assert_eq!(read(&b), b"three");
        assert_eq!(read(&c), b"two");
        // More than a batch: only the first SEND_BATCH are taken.
        let many: Vec<(SocketAddr, &[u8])> =
            (0..SEND_BATCH + 5).map(|_| (to_c, &b"x"[..])).collect();
        assert_eq!(a.send_many(&many), SEND_BATCH);
    }
}
