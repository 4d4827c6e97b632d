//! The TURN side of a load client, before the load: Allocate (401 then signed), then a
//! channel (ChannelBind) or a permission (CreatePermission) to its own peer. Blocking sockets
//! with timeouts; every exchange retried a bounded number of times. The client's and the
//! peer's sockets are made where they live ([`Net::at_clients`], [`Net::at_peers`]: in their
//! namespaces with `--netns`); everything after works on them from any thread. Also the
//! frames the load sends and the parsing of what comes back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use sipedge::core::turn::auth::long_term_key;
use sipedge::core::turn::encode::Writer;
use sipedge::core::turn::server::{
    decode_xor_address, ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, SEND,
};
use sipedge::core::turn::stun::{self, attr, Class};

use super::netns::Net;
use super::Mode;

/// The channel every client binds.
pub const CHANNEL: u16 = 0x4000;
/// Marks a load payload (after the send time, the sequence number and the client index).
pub const MAGIC: [u8; 4] = *b"RVC1";
/// Send time (ns since the run's base, u64), sequence (u64), client (u32), MAGIC.
pub const STAMP_LEN: usize = 24;
/// Socket buffers of the load generator's sockets: nothing is lost in the generator.
const BUFFER: usize = 4 << 20;

pub enum Io {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// One load client: its socket to the server, its peer's socket, and the frame it sends
/// (a template whose payload starts at `payload_at`).
pub struct Client {
    pub io: Io,
    pub peer: UdpSocket,
    pub frame: Vec<u8>,
    pub payload_at: usize,
}

fn bigger_buffers(sock: socket2::SockRef<'_>) {
    let _ = sock.set_recv_buffer_size(BUFFER);
    let _ = sock.set_send_buffer_size(BUFFER);
}

fn txid(client: usize, step: u8) -> [u8; 12] {
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&(client as u64).to_be_bytes());
    id[8] = step;
    id[9..].copy_from_slice(b"rvc");
    id
}

/// Sends a request and waits for the answer with its transaction id.
fn exchange(io: &mut Io, server: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let id = request.get(8..20).ok_or("short request")?.to_vec();
    match io {
        Io::Udp(sock) => {
            let mut buf = [0u8; 2048];
            for _ in 0..4 {
                sock.send_to(request, server).map_err(|e| e.to_string())?;
                let until = Instant::now() + Duration::from_secs(1);
                while Instant::now() < until {
                    let Ok(n) = sock.recv(&mut buf) else { break };
                    if buf.get(8..20) == Some(&id[..]) {
                        return Ok(buf[..n].to_vec());
                    }
                }
            }
            Err("no answer over UDP (4 tries)".into())
        }
        Io::Tcp(stream) => {
            stream.write_all(request).map_err(|e| e.to_string())?;
            for _ in 0..8 {
                let mut head = [0u8; 20];
                stream
                    .read_exact(&mut head)
                    .map_err(|e| format!("read over TCP: {e}"))?;
                let len = u16::from_be_bytes([head[2], head[3]]) as usize;
                let mut msg = head.to_vec();
                msg.resize(20 + len, 0);
                stream
                    .read_exact(&mut msg[20..])
                    .map_err(|e| format!("read over TCP: {e}"))?;
                if msg.get(8..20) == Some(&id[..]) {
                    return Ok(msg);
                }
            }
            Err("no matching answer over TCP".into())
        }
    }
}

fn value(msg: &[u8], kind: u16) -> Option<Vec<u8>> {
    let c = stun::check(msg).ok()?;
    let a = c.get(kind)?;
    msg.get(a.start..a.start + a.len).map(<[u8]>::to_vec)
}

fn expect_success(what: &str, msg: &[u8]) -> Result<(), String> {
    let c = stun::check(msg).map_err(|e| format!("{what}: bad answer ({e:?})"))?;
    if c.class == Class::Success {
        return Ok(());
    }
    let code = value(msg, attr::ERROR_CODE)
        .and_then(|v| Some(u16::from(*v.get(2)?) * 100 + u16::from(*v.get(3)?)));
    Err(format!("{what}: error {code:?}"))
}

/// A peer's socket on `peer_ip`, bound to a port of the kernel's choice.
pub fn peer_socket(peer_ip: &str) -> Result<UdpSocket, String> {
    let peer = UdpSocket::bind((peer_ip, 0)).map_err(|e| format!("peer socket: {e}"))?;
    bigger_buffers(socket2::SockRef::from(&peer));
    Ok(peer)
}

/// A client's socket on `client_ip` for `mode`: UDP, or TCP connected to `server`.
pub fn client_socket(mode: Mode, client_ip: &str, server: SocketAddr) -> Result<Io, String> {
    Ok(match mode {
        Mode::Channel | Mode::Send => {
            let s = UdpSocket::bind((client_ip, 0)).map_err(|e| format!("client socket: {e}"))?;
            bigger_buffers(socket2::SockRef::from(&s));
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .map_err(|e| e.to_string())?;
            Io::Udp(s)
        }
        Mode::Tcp => {
            let sock = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .map_err(|e| e.to_string())?;
            let from: SocketAddr = format!("{client_ip}:0")
                .parse()
                .map_err(|e| format!("{e}"))?;
            sock.bind(&from.into()).map_err(|e| e.to_string())?;
            bigger_buffers(socket2::SockRef::from(&sock));
            sock.connect_timeout(&server.into(), Duration::from_secs(3))
                .map_err(|e| format!("connect over TCP: {e}"))?;
            let s: TcpStream = sock.into();
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .map_err(|e| e.to_string())?;
            Io::Tcp(s)
        }
    })
}

/// Makes the client's and its peer's sockets where they live, allocates, binds or permits,
/// and builds the client's frame. `user`/`password` is a TURN REST credential both servers
/// accept.
pub fn setup(
    index: usize,
    mode: Mode,
    server: SocketAddr,
    (user, password): (&str, &str),
    size: usize,
    net: &Net,
) -> Result<Client, String> {
    let peer = net.at_peers(|| peer_socket(net.peer_ip))??;
    let peer_addr = peer.local_addr().map_err(|e| e.to_string())?;
    let mut io = net.at_clients(|| client_socket(mode, net.client_ip, server))??;

    let udp = [17, 0, 0, 0];
    let mut first = Writer::new(Class::Request, ALLOCATE, txid(index, 1));
    first.attr(attr::REQUESTED_TRANSPORT, &udp);
    let challenge = exchange(&mut io, server, &first.finish_with_fingerprint())?;
    let nonce = value(&challenge, attr::NONCE).ok_or("no NONCE in the 401")?;
    let realm = value(&challenge, attr::REALM).ok_or("no REALM in the 401")?;
    let realm_text = String::from_utf8_lossy(&realm).to_string();
    let key = long_term_key(user, &realm_text, password);
    let signed = |method: u16, step: u8, extra: &dyn Fn(&mut Writer)| {
        let mut w = Writer::new(Class::Request, method, txid(index, step));
        extra(&mut w);
        w.attr(attr::USERNAME, user.as_bytes())
            .attr(attr::REALM, &realm)
            .attr(attr::NONCE, &nonce)
            .integrity(&key);
        w.finish_with_fingerprint()
    };
    let allocated = exchange(
        &mut io,
        server,
        &signed(ALLOCATE, 2, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &udp);
        }),
    )?;
    expect_success("Allocate", &allocated)?;
    // The peer echoes to wherever the packet came from: the relayed address need not be
    // kept, only be there.
    value(&allocated, attr::XOR_RELAYED_ADDRESS)
        .and_then(|v| decode_xor_address(&v, &txid(index, 2)))
        .ok_or("no XOR-RELAYED-ADDRESS")?;

    let mut payload = vec![0xA5u8; size];
    payload[16..20].copy_from_slice(&(index as u32).to_be_bytes());
    payload[20..24].copy_from_slice(&MAGIC);
    let (frame, payload_at) = match mode {
        Mode::Channel | Mode::Tcp => {
            let bound = exchange(
                &mut io,
                server,
                &signed(CHANNEL_BIND, 3, &|w| {
                    w.attr(attr::CHANNEL_NUMBER, &[(CHANNEL >> 8) as u8, 0, 0, 0])
                        .xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
                }),
            )?;
            expect_success("ChannelBind", &bound)?;
            let mut frame = CHANNEL.to_be_bytes().to_vec();
            frame.extend_from_slice(&(size as u16).to_be_bytes());
            frame.extend_from_slice(&payload);
            if mode == Mode::Tcp {
                // Over a stream ChannelData is padded to a multiple of 4 (RFC 8656 §12.5).
                frame.resize(frame.len().next_multiple_of(4), 0);
            }
            (frame, 4)
        }
        Mode::Send => {
            let permitted = exchange(
                &mut io,
                server,
                &signed(CREATE_PERMISSION, 3, &|w| {
                    w.xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
                }),
            )?;
            expect_success("CreatePermission", &permitted)?;
            let mut w = Writer::new(Class::Indication, SEND, txid(index, 4));
            w.xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
                .attr(attr::DATA, &payload);
            let frame = w.finish();
            let at = frame.len() - size.next_multiple_of(4);
            (frame, at)
        }
    };
    Ok(Client {
        io,
        peer,
        frame,
        payload_at,
    })
}

/// Writes the stamp (send time, sequence) into a payload.
pub fn stamp(payload: &mut [u8], sent_ns: u64, seq: u64) {
    payload[..8].copy_from_slice(&sent_ns.to_be_bytes());
    payload[8..16].copy_from_slice(&seq.to_be_bytes());
}

/// The send time in a load payload, if it is one.
pub fn stamp_of(payload: &[u8]) -> Option<u64> {
    if payload.get(20..24)? != MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// The payload of what the server sent a UDP client: ChannelData, or a Data indication's
/// DATA attribute.
pub fn payload_of(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    if first & 0xC0 == 0x40 {
        let len = u16::from_be_bytes([*datagram.get(2)?, *datagram.get(3)?]) as usize;
        return datagram.get(4..4 + len);
    }
    // A STUN message: walk the attributes for DATA (no need for the full check here).
    let len = u16::from_be_bytes([*datagram.get(2)?, *datagram.get(3)?]) as usize;
    let end = (20 + len).min(datagram.len());
    let mut at = 20;
    while at + 4 <= end {
        let kind = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let alen = u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]) as usize;
        if kind == attr::DATA {
            return datagram.get(at + 4..at + 4 + alen);
        }
        at += 4 + alen.next_multiple_of(4);
    }
    None
}

/// The length of the first whole frame on a TURN-over-TCP stream, if it is all there:
/// ChannelData padded to 4, or a STUN message.
pub fn stream_frame_len(buf: &[u8]) -> Option<usize> {
    let first = *buf.first()?;
    let len = u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize;
    let total = if first & 0xC0 == 0x40 {
        4 + len.next_multiple_of(4)
    } else {
        20 + len
    };
    (buf.len() >= total).then_some(total)
}
