//! The A/V Edge under test and a STUN/TURN client for it: an edge with a relay in both
//! zones, credentials from its ring, requests signed with them, over UDP and TCP.

use super::*;

/// An edge with a relay listening on both zones (UDP and TCP).
pub(super) struct Av {
    pub(super) pki: Pki,
    pub(super) _director: Director,
    pub(super) edge: shell::RunningEdge,
    pub(super) ring: Ring,
    pub(super) ext_udp: SocketAddr,
    pub(super) int_udp: SocketAddr,
    pub(super) ext_tcp: SocketAddr,
    pub(super) int_tcp: SocketAddr,
    /// The relayed port range.
    pub(super) ports: (u16, u16),
}

impl Av {
    pub(super) async fn start(
        firewall: impl FnOnce(&mut Firewall),
        tune: impl FnOnce(&mut Relay),
    ) -> Av {
        Av::start_with(firewall, tune, |_| {}, None).await
    }

    /// An edge with a relay; `ring`: another member's ring file (one pool), else its own;
    /// `adjust`: the rest of the topology.
    pub(super) async fn start_with(
        firewall: impl FnOnce(&mut Firewall),
        tune: impl FnOnce(&mut Relay),
        adjust: impl FnOnce(&mut sipedge::topology::Topology),
        ring: Option<(std::path::PathBuf, Ring)>,
    ) -> Av {
        let pki = Pki::new();
        let (ring_path, ring) = ring.unwrap_or_else(|| ring_file(&pki));
        let director = Director::start(&pki).await;
        let mut t = topology(&pki, &[director.addr]);
        t.keys = Some(KeysSource::File(ring_path));
        firewall(&mut t.firewall);
        adjust(&mut t);
        // Each edge of this file its own 100 ports, below the ephemeral ports (32768) and
        // apart from the other relay tests' ranges: a relayed port taken by someone else
        // costs a UDP client a retransmission and a TCP client its answer.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let base = 32_000 + NEXT.fetch_add(1, Ordering::Relaxed) % 7 * 100;
        let mut relay = loopback_relay(&["127.0.0.1:0", "127.0.0.2:0"], base);
        tune(&mut relay);
        let ports = (relay.port_min, relay.port_max);
        t.relay = Some(relay);
        let edge = shell::start(&t).await.expect("edge starts");
        let (ext_udp, int_udp) = (edge.turn_udp[0], edge.turn_udp[1]);
        let (ext_tcp, int_tcp) = (edge.turn_tcp[0], edge.turn_tcp[1]);
        Av {
            pki,
            _director: director,
            edge,
            ring,
            ext_udp,
            int_udp,
            ext_tcp,
            int_tcp,
            ports,
        }
    }

    pub(super) fn stats(&self) -> &sipedge::shell::turn::TurnStats {
        &self.edge.turn.as_ref().unwrap().stats
    }

    pub(super) fn dropped(&self, reason: &str) -> u64 {
        self.stats()
            .dropped()
            .filter(|(r, _)| *r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    pub(super) fn metrics(&self) -> String {
        let text = sipedge::shell::ops::metrics(&self.edge.view, sipedge::shell::clock::now());
        prometheus_check(&text);
        text
    }

    /// A credential for `user` valid `ttl` seconds.
    pub(super) fn credential(&self, user: &str, ttl: u64) -> Credential {
        credential_of(&self.ring, user, ttl)
    }
}

/// A credential for `user` valid `ttl` seconds, signed by `ring`'s signing key.
pub(super) fn credential_of(ring: &Ring, user: &str, ttl: u64) -> Credential {
    let c = credentials::mint(ring, user, ttl, sipedge::shell::clock::now_unix()).unwrap();
    Credential {
        key: long_term_key(&c.username, DOMAIN, &c.password).to_vec(),
        username: c.username,
    }
}

pub(super) struct Credential {
    pub(super) username: String,
    pub(super) key: Vec<u8>,
}

/// A STUN request, signed with `auth` (credential and nonce) when given.
pub(super) fn request(
    method: u16,
    id: u8,
    build: &dyn Fn(&mut Writer),
    auth: Option<(&Credential, &[u8])>,
) -> Vec<u8> {
    let auth = auth.map(|(c, nonce)| TurnAuth {
        username: &c.username,
        key: &c.key,
        nonce,
    });
    turn_request(method, id, build, auth.as_ref())
}

pub(super) fn allocate_udp(w: &mut Writer) {
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
}

/// A STUN exchange over UDP as a client does it (see [`exchange`]).
pub(super) async fn udp_exchange(sock: &UdpSocket, to: SocketAddr, request: &[u8]) -> Vec<u8> {
    exchange(sock, to, request).await
}

/// One TURN client over UDP from its own loopback address.
pub(super) struct UdpClient {
    pub(super) sock: UdpSocket,
    pub(super) turn: SocketAddr,
    pub(super) nonce: Vec<u8>,
    pub(super) next_id: u8,
}

impl UdpClient {
    pub(super) async fn new(source: &str, turn: SocketAddr) -> UdpClient {
        let sock = UdpSocket::bind(format!("{source}:0")).await.unwrap();
        let challenge = udp_exchange(&sock, turn, &request(ALLOCATE, 1, &allocate_udp, None)).await;
        assert_eq!(error_code(&challenge), Some(401));
        let nonce = attr_value(&challenge, attr::NONCE).expect("401 with a nonce");
        UdpClient {
            sock,
            turn,
            nonce,
            next_id: 2,
        }
    }

    pub(super) async fn ask(
        &mut self,
        c: &Credential,
        method: u16,
        build: &dyn Fn(&mut Writer),
    ) -> Vec<u8> {
        let id = self.next_id;
        self.next_id += 1;
        let req = request(method, id, build, Some((c, &self.nonce)));
        udp_exchange(&self.sock, self.turn, &req).await
    }

    pub(super) async fn allocate(
        &mut self,
        c: &Credential,
        build: &dyn Fn(&mut Writer),
    ) -> Vec<u8> {
        self.ask(c, ALLOCATE, &|w| {
            allocate_udp(w);
            build(w);
        })
        .await
    }
}

pub(super) fn relayed_of(answer: &[u8]) -> SocketAddr {
    let id: [u8; 12] = answer[8..20].try_into().unwrap();
    decode_xor_address(
        &attr_value(answer, attr::XOR_RELAYED_ADDRESS).expect("allocated"),
        &id,
    )
    .unwrap()
}

/// One STUN exchange over a TCP stream; `None` when the edge closed it.
pub(super) async fn tcp_exchange(stream: &mut TcpStream, req: &[u8]) -> Option<Vec<u8>> {
    stream.write_all(req).await.ok()?;
    tcp_read_message(stream).await
}

pub(super) async fn tcp_read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    tcp_message_within(stream, WAIT)
        .await
        .expect("the edge answered or closed")
}

/// The next STUN message on the stream; `Err` when none begins within `wait`, `None` when
/// the stream ended. Once it begins, the rest must follow within [`WAIT`].
pub(super) async fn tcp_message_within(
    stream: &mut TcpStream,
    wait: Duration,
) -> Result<Option<Vec<u8>>, tokio::time::error::Elapsed> {
    let mut head = [0u8; 20];
    if tokio::time::timeout(wait, stream.read_exact(&mut head))
        .await?
        .is_err()
    {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut msg = head.to_vec();
    msg.resize(20 + len, 0);
    let rest = tokio::time::timeout(WAIT, stream.read_exact(&mut msg[20..]))
        .await
        .expect("the rest of a message follows its head");
    Ok(rest.ok().map(|_| msg))
}

/// A TURN-over-TCP client's allocation: the 401 round, then the signed Allocate.
pub(super) struct TcpAllocation {
    /// For the client's next signed requests.
    pub(super) nonce: Vec<u8>,
    pub(super) relayed: SocketAddr,
    /// Bytes of the two answers the client read.
    pub(super) answered: usize,
}

impl TcpAllocation {
    /// A request of the client's, signed with `cred` and the allocation's nonce.
    pub(super) fn signed(
        &self,
        cred: &Credential,
        method: u16,
        id: u8,
        build: &dyn Fn(&mut Writer),
    ) -> Vec<u8> {
        request(method, id, build, Some((cred, &self.nonce)))
    }
}

pub(super) async fn tcp_allocate(stream: &mut TcpStream, cred: &Credential) -> TcpAllocation {
    let challenge = tcp_exchange(stream, &request(ALLOCATE, 1, &allocate_udp, None))
        .await
        .unwrap();
    let nonce = attr_value(&challenge, attr::NONCE).unwrap();
    let signed = request(ALLOCATE, 2, &allocate_udp, Some((cred, &nonce)));
    let allocated = tcp_exchange(stream, &signed).await.unwrap();
    assert_eq!(error_code(&allocated), None, "allocated over TCP");
    TcpAllocation {
        relayed: relayed_of(&allocated),
        answered: challenge.len() + allocated.len(),
        nonce,
    }
}

/// Whether the edge closed the stream (EOF or reset) within `wait`.
pub(super) async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

pub(super) async fn tcp_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

pub(super) fn binding(id: u8) -> Vec<u8> {
    request(0x001, id, &|_| {}, None)
}
