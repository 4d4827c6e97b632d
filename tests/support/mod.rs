//! Test support: a throw-away PKI, topologies built around it, a TLS SIP client (a remote
//! user) and a mutual-TLS Director stub. Framing here is deliberately independent of the
//! edge's own framer, so a framing bug in the edge cannot hide in the tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::ServerName;
use sipedge::tls::{self, DevNames, DevPki, DevRole};
use sipedge::topology::{
    CaSource, CertSource, Edge, ExternalIface, Firewall, InternalIface, Limits, NextHopPool, Probe,
    Topology,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

mod dns;
// The federation tests use it; the benches that share this file do not.
#[allow(unused_imports)]
pub use dns::DnsStub;
pub mod netns;

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(5);

pub const EDGE_FQDN: &str = "edge.sipedge.test";
pub const DIRECTOR_NAME: &str = "director.sipedge.test";
pub const DOMAIN: &str = "sipedge.test";

/// A PKI in a temporary directory (deleted on drop).
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub pki: DevPki,
}

impl Pki {
    /// The loopback edge's: [`EDGE_FQDN`] on 127.0.0.1, 127.0.0.2 inside.
    pub fn new() -> Pki {
        Pki::for_org(EDGE_FQDN, "127.0.0.1", "127.0.0.2")
    }

    /// A PKI of its own for another organisation's edge: external names `pool_fqdn` and
    /// `ext_ip`, internal names `int_ip` and `edge.internal`, and the test Director.
    pub fn for_org(pool_fqdn: &str, ext_ip: &str, int_ip: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = DevNames {
            external: vec![pool_fqdn.into(), ext_ip.into()],
            internal: vec![int_ip.into(), "edge.internal".into()],
            director: vec![DIRECTOR_NAME.into()],
        };
        let pki = tls::dev::generate(dir.path(), &names).expect("generate PKI");
        Pki { dir, pki }
    }

    pub fn source(&self, role: DevRole) -> CertSource {
        let (cert, key) = self.pki.files(role);
        CertSource::Pem {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        tls::load_roots(&CaSource::Pem(self.pki.ca_cert.clone()), None).expect("roots")
    }

    pub fn material(&self, role: DevRole) -> tls::CertifiedKeyMaterial {
        tls::load_cert(&self.source(role), None, role).expect("material")
    }

    /// The `[external.tls]` and `[internal.tls]` tables of a topology file for this PKI's
    /// PEM files (inside, with its CA).
    pub fn tls_tables(&self) -> (String, String) {
        let (ec, ek) = self.pki.files(DevRole::External);
        let (ic, ik) = self.pki.files(DevRole::Internal);
        (
            format!(
                "[external.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                ec.display(),
                ek.display()
            ),
            format!(
                "[internal.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
                ic.display(),
                ik.display(),
                self.pki.ca_cert.display()
            ),
        )
    }
}

/// A topology on loopback: external 127.0.0.1, internal 127.0.0.2, free ports.
pub fn topology(pki: &Pki, members: &[SocketAddr]) -> Topology {
    Topology {
        source: None,
        state_dir: PathBuf::from(pki.dir.path()),
        edge: Edge {
            name: "edge1".into(),
            pool_fqdn: EDGE_FQDN.into(),
            sip_domains: vec![DOMAIN.into()],
        },
        external: ExternalIface {
            sip_bind: "127.0.0.1:0".parse().unwrap(),
            sip_host: EDGE_FQDN.into(),
            cert: pki.source(DevRole::External),
        },
        internal: InternalIface {
            sip_bind: "127.0.0.2:0".parse().unwrap(),
            sip_host: "127.0.0.2".into(),
            cert: pki.source(DevRole::Internal),
            ca: CaSource::Pem(pki.pki.ca_cert.clone()),
        },
        next_hop: NextHopPool {
            members: members.to_vec(),
            server_name: DIRECTOR_NAME.into(),
            probe: Probe {
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(150),
                rise: 1,
                fall: 2,
            },
            retry_after: Duration::from_secs(30),
        },
        limits: Limits {
            max_header_bytes: 16384,
            max_body_bytes: 65536,
            max_headers: 128,
            max_line_bytes: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(1800),
            write_timeout: Duration::from_secs(10),
            max_queued_bytes: 1024 * 1024,
            max_connections: 1000,
            max_handshakes: 256,
            max_outstanding: 10_000,
            drain_timeout: Duration::from_secs(30),
            max_calls: 10_000,
            max_calls_per_source: 10_000,
            max_call_duration: Duration::from_secs(12 * 3600),
        },
        // Loopback tests play many users from 127.0.0.1: exempt it from per-source limits
        // and lift the per-connection rate; the firewall tests set their own.
        firewall: Firewall {
            allow_sources: vec![sipedge::core::net::Prefix::parse("127.0.0.0/8").unwrap()],
            connection_request_rate: 1_000_000,
            connection_request_burst: 1_000_000,
            ..Firewall::default()
        },
        operations: None,
        keys: None,
        relay: None,
        federation: None,
        pool: None,
        capture: None,
    }
}

/// Waits until `f` holds, polling; panics after [`WAIT`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Splits complete SIP messages off a buffer (header block + Content-Length body); leading
/// CRLFs are returned as their own items.
pub fn split_message(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    if buf.starts_with(b"\r\n") {
        let n = if buf.starts_with(b"\r\n\r\n") { 4 } else { 2 };
        return Some(buf.drain(..n).collect());
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len = head
        .split("\r\n")
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let name = name.trim().to_ascii_lowercase();
            (name == "content-length" || name == "l").then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    if buf.len() < end + len {
        return None;
    }
    Some(buf.drain(..end + len).collect())
}

/// A remote user's TLS connection to the edge's external listener.
pub struct Client {
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(pki: &Pki, edge: SocketAddr) -> Client {
        Self::connect_from(pki, edge, "127.0.0.1").await
    }

    /// Connects from a given loopback source address (to play different users).
    pub async fn connect_from(pki: &Pki, edge: SocketAddr, source: &str) -> Client {
        Self::connect_trusting(pki.roots(), edge, source).await
    }

    /// Connects trusting `roots` (e.g. the dev CA a running edge generated).
    pub async fn connect_with_roots(roots: rustls::RootCertStore, edge: SocketAddr) -> Client {
        Self::connect_trusting(roots, edge, "127.0.0.1").await
    }

    pub async fn connect_trusting(
        roots: rustls::RootCertStore,
        edge: SocketAddr,
        source: &str,
    ) -> Client {
        Self::connect_with(roots, edge, source, None).await
    }

    /// Connects with a small receive buffer (a client whose window fills fast).
    pub async fn connect_small_window(
        pki: &Pki,
        edge: SocketAddr,
        source: &str,
        rcvbuf: u32,
    ) -> Client {
        Self::connect_with(pki.roots(), edge, source, Some(rcvbuf)).await
    }

    async fn connect_with(
        roots: rustls::RootCertStore,
        edge: SocketAddr,
        source: &str,
        rcvbuf: Option<u32>,
    ) -> Client {
        Self::connect_as(roots, None, edge, source, EDGE_FQDN, rcvbuf)
            .await
            .expect("TLS to edge")
    }

    /// Connects presenting `identity` (a client certificate) if given, verifying the edge
    /// as `server_name`; the handshake's error when it fails.
    pub async fn connect_as(
        roots: rustls::RootCertStore,
        identity: Option<tls::CertifiedKeyMaterial>,
        edge: SocketAddr,
        source: &str,
        server_name: &str,
        rcvbuf: Option<u32>,
    ) -> std::io::Result<Client> {
        let cfg = tls::client_config_trusting(roots, identity).unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let tcp = socket.connect(edge).await?;
        let stream = TlsConnector::from(cfg)
            .connect(ServerName::try_from(server_name.to_string()).unwrap(), tcp)
            .await?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.get_ref().0.local_addr().unwrap()
    }

    pub async fn send(&mut self, msg: &str) {
        self.send_bytes(msg.as_bytes()).await;
    }

    /// Writes without failing the test (attack clients expect the edge to cut them off).
    pub async fn stream_write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next message (or keep-alive), failing the test after [`WAIT`].
    pub async fn recv(&mut self) -> String {
        self.try_recv(WAIT)
            .await
            .expect("timed out waiting for a message from the edge")
    }

    /// The next message as bytes (an answer may echo bytes that are not UTF-8).
    pub async fn recv_raw(&mut self) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(m) = split_message(&mut self.buf) {
                return m;
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("timed out waiting for a message from the edge")
                .expect("read");
            assert!(n > 0, "the edge closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next message, or `None` on timeout or when the edge closed the connection.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(m) = split_message(&mut self.buf) {
                return Some(String::from_utf8(m).expect("edge sent UTF-8"));
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the edge closed the connection (within [`WAIT`]).
    pub async fn closed(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }
}

/// A received message on one of the Director's connections.
#[derive(Debug)]
pub struct Received {
    pub conn: usize,
    pub text: String,
}

/// A mutual-TLS Director stub. Answers the edge's OPTIONS probes with `probe_status`
/// (200 unless changed); hands every other message to the test.
pub struct Director {
    pub addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
    senders: Arc<Mutex<Vec<mpsc::UnboundedSender<Vec<u8>>>>>,
    pub probe_status: Arc<Mutex<u16>>,
    /// Answer every non-probe request with this status automatically (load and failover).
    pub auto_answer: Arc<Mutex<Option<u16>>>,
    task: tokio::task::JoinHandle<()>,
    conn_tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Director {
    /// From now on answers every request 200 OK itself (and still passes it on).
    pub fn answering_ok(self) -> Director {
        *self.auto_answer.lock().unwrap() = Some(200);
        self
    }

    pub async fn start(pki: &Pki) -> Director {
        Self::start_at(pki, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_at(pki: &Pki, at: SocketAddr) -> Director {
        Self::start_with(pki.material(DevRole::Director), pki.roots(), at).await
    }

    /// A Director with the given certificate, requiring client certificates from `roots`.
    pub async fn start_with(
        material: tls::CertifiedKeyMaterial,
        roots: rustls::RootCertStore,
        at: SocketAddr,
    ) -> Director {
        let listener = TcpListener::bind(at).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = tls::server_config_requiring_client(material, roots).unwrap();
        let acceptor = TlsAcceptor::from(cfg);
        let (tx, rx) = mpsc::unbounded_channel();
        let senders: Arc<Mutex<Vec<mpsc::UnboundedSender<Vec<u8>>>>> = Arc::default();
        let probe_status = Arc::new(Mutex::new(200));
        let auto_answer = Arc::new(Mutex::new(None));
        let conn_tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let task = {
            let conn_tasks = conn_tasks.clone();
            let senders = senders.clone();
            let probe_status = probe_status.clone();
            let auto_answer = auto_answer.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        continue;
                    };
                    let (out_tx, out_rx) = mpsc::unbounded_channel();
                    let conn = {
                        let mut s = senders.lock().unwrap();
                        s.push(out_tx.clone());
                        s.len() - 1
                    };
                    let handle = tokio::spawn(serve_director_conn(
                        stream,
                        conn,
                        tx.clone(),
                        out_tx,
                        out_rx,
                        probe_status.clone(),
                        auto_answer.clone(),
                    ));
                    conn_tasks.lock().unwrap().push(handle);
                }
            })
        };
        Director {
            addr,
            rx,
            senders,
            probe_status,
            auto_answer,
            task,
            conn_tasks,
        }
    }

    pub async fn recv(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for a message at the Director")
            .expect("director closed")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends bytes on connection `conn` (the edge usually has exactly one: 0).
    pub fn send(&self, conn: usize, msg: &str) {
        let s = self.senders.lock().unwrap();
        s[conn]
            .send(msg.as_bytes().to_vec())
            .expect("director connection gone");
    }

    /// Stops accepting and drops every connection.
    pub fn kill(self) {
        self.task.abort();
        for t in self.conn_tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        self.senders.lock().unwrap().clear();
    }
}

async fn serve_director_conn(
    mut stream: tokio_rustls::server::TlsStream<TcpStream>,
    conn: usize,
    tx: mpsc::UnboundedSender<Received>,
    out_tx: mpsc::UnboundedSender<Vec<u8>>,
    mut out_rx: mpsc::UnboundedReceiver<Vec<u8>>,
    probe_status: Arc<Mutex<u16>>,
    auto_answer: Arc<Mutex<Option<u16>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    loop {
        tokio::select! {
            n = stream.read(&mut chunk) => {
                let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(m) = split_message(&mut buf) {
                    let text = String::from_utf8_lossy(&m).to_string();
                    if text.starts_with("OPTIONS ") && text.contains("branch=z9hG4bKprobe") {
                        let status = *probe_status.lock().unwrap();
                        let _ = out_tx.send(response_to(&text, status, "Probe").into_bytes());
                        continue;
                    }
                    let auto = *auto_answer.lock().unwrap();
                    if let Some(status) = auto {
                        if !text.starts_with("SIP/2.0") && !text.starts_with("ACK ") {
                            let _ = out_tx.send(response_to(&text, status, "Auto").into_bytes());
                        }
                    }
                    if tx.send(Received { conn, text }).is_err() {
                        return;
                    }
                }
            }
            Some(out) = out_rx.recv() => {
                if stream.write_all(&out).await.is_err() { return; }
                let _ = stream.flush().await;
            }
        }
    }
}

/// All values of a header (by long or compact name), in order.
pub fn headers<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect()
}

/// A response to `req` as a UAS would build it: all Vias, From, To (+tag), Call-ID, CSeq.
pub fn response_to(req: &str, status: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for line in req
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .split("\r\n")
        .skip(1)
    {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" | "record-route" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(line);
                if !line.contains("tag=") {
                    out.push_str(";tag=uas1");
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// The token in the edge's first Record-Route entry (`<sip:TOKEN@host...>`) of a forwarded
/// dialog-forming request: what in-dialog requests carry in their Route.
pub fn rr_token(msg: &str) -> String {
    let rr = headers(msg, "Record-Route");
    let first = rr.first().expect("a Record-Route");
    let start = first.find("<sip:").expect("a SIP URI") + 5;
    let end = first[start..].find('@').expect("a user part") + start;
    first[start..end].to_string()
}

/// The route set a caller takes from a dialog-forming response: its Record-Route entries,
/// last first (RFC 3261 §12.1.2), joined for a Route header's value.
pub fn route_set(response: &str) -> String {
    let mut route: Vec<&str> = response
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("Record-Route: "))
        .flat_map(|v| v.split(", "))
        .collect();
    route.reverse();
    route.join(", ")
}

/// The value of `param` in a header value (`;name=value`).
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=')?;
        (n.trim() == name).then_some(v.trim().trim_end_matches('>'))
    })
}

pub fn state_dir(p: &Path) -> PathBuf {
    p.to_path_buf()
}

/// Starts the edge of `t` with an operations listener on 127.0.0.2: the edge, and the
/// listener's address for [`http_get`].
pub async fn start_with_operations(mut t: Topology) -> (sipedge::shell::RunningEdge, String) {
    t.operations = Some(sipedge::topology::Operations {
        listen: "127.0.0.2:0".parse().unwrap(),
    });
    let edge = sipedge::shell::start(&t).await.expect("edge starts");
    let ops = edge.operations.expect("operations listener").to_string();
    (edge, ops)
}

/// The body of a SIP or HTTP message: what follows the blank line.
pub fn body_of(message: &str) -> &str {
    let blank = message.find("\r\n\r\n").expect("a blank line");
    &message[blank + 4..]
}

/// A TURN relay for tests on loopback: listening on `listen` (UDP and TCP), relaying from
/// 127.0.0.1 on ports `base` to `base` + 99, loopback peers allowed.
pub fn loopback_relay(listen: &[&str], base: u16) -> sipedge::topology::Relay {
    let listen: Vec<SocketAddr> = listen.iter().map(|a| a.parse().unwrap()).collect();
    sipedge::topology::Relay {
        listen_udp: listen.clone(),
        listen_tcp: listen,
        relay_ip: Some("127.0.0.1".parse().unwrap()),
        port_min: base,
        port_max: base + 99,
        allow_loopback_peers: true,
        ..sipedge::topology::Relay::new("127.0.0.1")
    }
}

/// One plain HTTP GET (the operations listener); the whole answer as text.
pub async fn http_get(addr: &str, path: &str) -> String {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await
}

/// Sends `request` bytes and reads until the server closes.
pub async fn http_raw(addr: &str, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr)
        .await
        .expect("connect to operations");
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("operations answered")
        .unwrap();
    String::from_utf8_lossy(&out).to_string()
}

/// A TCP port free on `ip` right now (bound, then released).
pub fn free_tcp_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port free on `ip` right now (bound, then released).
pub fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An executable on `PATH`, if there is one.
pub fn tool_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// A tool some tests need, if found. Without it a test skips on a developer machine
/// (saying so) and fails under CI, where `.ci/run` installs it.
pub fn required<T>(found: Option<T>, what: &str, install: &str) -> Option<T> {
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{what} is required under CI ({install})");
        }
        eprintln!("SKIPPED: needs {what} ({install})");
    }
    found
}

/// What a finished process printed: its stdout, then its stderr.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// coturn's `turnutils_uclient` allocates a relay on the TURN server at 127.0.0.1:`port`
/// with the credential and sends `messages` messages of `length` bytes through it:
/// whether it succeeded, and what it printed.
pub fn uclient_relays(
    uclient: &Path,
    port: u16,
    (user, pass): (&str, &str),
    messages: u32,
    length: u32,
) -> (bool, String) {
    let out = std::process::Command::new(uclient)
        .args(["-p", &port.to_string(), "-u", user, "-w", pass])
        .args(["-n", &messages.to_string(), "-m", "1"])
        .args(["-l", &length.to_string(), "-y", "127.0.0.1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), printed(&out))
}

/// `sipedge run --topology FILE` started by `cmd` (the binary, or the binary inside a
/// network namespace), logging warnings, its stdout piped for the start-up lines.
pub fn run_topology(
    mut cmd: std::process::Command,
    topology: &Path,
    stderr: std::process::Stdio,
) -> Reaped {
    use std::process::Stdio;
    Reaped(
        cmd.args(["run", "--topology"])
            .arg(topology)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

/// The embedded loopback default with every listener on a port free right now, for a test
/// that runs the real binary beside others.
pub struct FreePortsDefault {
    /// The topology file's text.
    pub text: String,
    /// External SIP on 127.0.0.1.
    pub external: u16,
    /// The next hop (the lab Director's place) on 127.0.0.1.
    pub director: u16,
    /// The operations listener, `127.0.0.2:PORT`.
    pub operations: String,
}

impl FreePortsDefault {
    pub fn new() -> FreePortsDefault {
        let (external, internal, director) = (
            free_tcp_port("127.0.0.1"),
            free_tcp_port("127.0.0.2"),
            free_tcp_port("127.0.0.1"),
        );
        let operations = format!("127.0.0.2:{}", free_tcp_port("127.0.0.2"));
        let text = sipedge::topology::EMBEDDED_DEFAULT
            .replace("127.0.0.1:5061", &format!("127.0.0.1:{external}"))
            .replace("127.0.0.2:5061", &format!("127.0.0.2:{internal}"))
            .replace("127.0.0.1:5070", &format!("127.0.0.1:{director}"))
            .replace("127.0.0.2:9095", &operations)
            .replace(
                "host = \"av.sipedge.test\"",
                &format!(
                    // Relayed ports below the ephemeral ones the listeners were given (a
                    // listener in the relayed range is refused).
                    "host = \"av.sipedge.test\"\nlisten_udp = [\"127.0.0.1:{}\", \"127.0.0.2:{}\"]\nlisten_tcp = [\"127.0.0.1:{}\"]\nport_min = 21000\nport_max = 21099",
                    free_udp_port("127.0.0.1"),
                    free_udp_port("127.0.0.2"),
                    free_tcp_port("127.0.0.1")
                ),
            );
        FreePortsDefault {
            text,
            external,
            director,
            operations,
        }
    }
}

/// A child process killed (by its own PID) and reaped when dropped, pass or fail.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Checks `text` with the Prometheus project's own text-format parser (`prometheus_client`
/// on PyPI): every family parses, is a counter or a gauge and has its HELP. Returns
/// "families samples"; `None` (after saying so) when the parser is not installed outside CI.
pub fn prometheus_check(text: &str) -> Option<String> {
    use std::io::Write;
    let installed = std::process::Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        if std::env::var_os("CI").is_some() {
            panic!("prometheus_client is required under CI (pip install prometheus_client)");
        }
        eprintln!("SKIPPED: the metrics format check needs `pip install prometheus_client`");
        return None;
    }
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
families = list(text_string_to_metric_families(text))
assert families, "no families"
for f in families:
    assert f.type in ("counter", "gauge"), (f.name, f.type)
    assert f.documentation, f.name
print(len(families), sum(len(f.samples) for f in families))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).to_string())
}

/// A STUN exchange over UDP as a client does it (RFC 8489 §6.2.1): the request is
/// retransmitted a second apart until its answer comes (at most 7 times); answers to
/// other transactions (a late one to an earlier retransmission) are skipped. A relayed port
/// the kernel refuses (another test's relay, run in parallel, holds it) costs the edge's
/// answer, and the retransmission gets another port, as it would for a real client.
pub async fn exchange(sock: &tokio::net::UdpSocket, to: SocketAddr, request: &[u8]) -> Vec<u8> {
    let transaction = request.get(8..20);
    let mut buf = vec![0u8; 2048];
    for _ in 0..7 {
        sock.send_to(request, to).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(got) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            let (n, _) = got.unwrap();
            if n >= 20 && buf.get(8..20) == transaction {
                buf.truncate(n);
                return buf;
            }
        }
    }
    panic!("TURN answered none of 7 transmissions a second apart");
}

/// Who signs a TURN request: the credential's username and long-term key, and the nonce
/// the server gave.
pub struct TurnAuth<'a> {
    pub username: &'a str,
    pub key: &'a [u8],
    pub nonce: &'a [u8],
}

/// A TURN request of `method` with transaction id `[id; 12]` and `build`'s attributes,
/// signed (USERNAME, REALM, NONCE, MESSAGE-INTEGRITY) when `auth` is given; FINGERPRINT last.
pub fn turn_request(
    method: u16,
    id: u8,
    build: &dyn Fn(&mut sipedge::core::turn::encode::Writer),
    auth: Option<&TurnAuth<'_>>,
) -> Vec<u8> {
    use sipedge::core::turn::stun::{attr, Class};
    let mut w = sipedge::core::turn::encode::Writer::new(Class::Request, method, [id; 12]);
    build(&mut w);
    if let Some(a) = auth {
        w.attr(attr::USERNAME, a.username.as_bytes())
            .attr(attr::REALM, DOMAIN.as_bytes())
            .attr(attr::NONCE, a.nonce)
            .integrity(a.key);
    }
    w.finish_with_fingerprint()
}

/// The value of a STUN attribute in a message that passes the strict check.
pub fn attr_value(msg: &[u8], kind: u16) -> Option<Vec<u8>> {
    let c = sipedge::core::turn::stun::check(msg).ok()?;
    let a = c.get(kind)?;
    Some(msg[a.start..a.start + a.len].to_vec())
}

/// A fresh pool key ring in the PKI's directory, as `sipedge keys init` writes one: its
/// path (for `[keys] ring`) and the ring as loaded back (to mint credentials).
pub fn ring_file(pki: &Pki) -> (PathBuf, sipedge::core::keyring::Ring) {
    use sipedge::shell::keyfile;
    let path = pki.dir.path().join("ring.toml");
    let ring = sipedge::core::keyring::Ring::init(
        keyfile::random_secret().unwrap(),
        sipedge::shell::clock::now_unix(),
    );
    keyfile::store(&path, &ring, true).unwrap();
    (path.clone(), keyfile::load(&path).unwrap())
}

/// A TURN client just big enough for the checks: allocate, permission, channel.
pub struct TurnSession {
    pub sock: tokio::net::UdpSocket,
    pub server: SocketAddr,
    pub relayed: SocketAddr,
    username: String,
    key: [u8; 16],
    nonce: Vec<u8>,
    next_id: u8,
}

impl TurnSession {
    pub async fn allocate(
        sock: tokio::net::UdpSocket,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> TurnSession {
        use sipedge::core::turn::encode::Writer;
        use sipedge::core::turn::server::{decode_xor_address, ALLOCATE};
        use sipedge::core::turn::stun::{attr, Class};
        let username = username.to_string();
        let key = sipedge::core::turn::auth::long_term_key(&username, DOMAIN, password);
        let mut w = Writer::new(Class::Request, ALLOCATE, [1; 12]);
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        let challenge = exchange(&sock, server, &w.finish_with_fingerprint()).await;
        let nonce = attr_value(&challenge, attr::NONCE).expect("401 with a nonce");
        let mut s = TurnSession {
            sock,
            server,
            relayed: server,
            username,
            key,
            nonce,
            next_id: 2,
        };
        let answer = s
            .request(ALLOCATE, |w| {
                w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            })
            .await;
        let id = [s.next_id - 1; 12];
        s.relayed = decode_xor_address(
            &attr_value(&answer, attr::XOR_RELAYED_ADDRESS).expect("allocated"),
            &id,
        )
        .unwrap();
        s
    }

    pub async fn request(
        &mut self,
        method: u16,
        build: impl Fn(&mut sipedge::core::turn::encode::Writer),
    ) -> Vec<u8> {
        use sipedge::core::turn::encode::Writer;
        use sipedge::core::turn::stun::{attr, Class};
        let mut w = Writer::new(Class::Request, method, [self.next_id; 12]);
        self.next_id += 1;
        build(&mut w);
        w.attr(attr::USERNAME, self.username.as_bytes())
            .attr(attr::REALM, DOMAIN.as_bytes())
            .attr(attr::NONCE, &self.nonce)
            .integrity(&self.key);
        exchange(&self.sock, self.server, &w.finish_with_fingerprint()).await
    }

    /// The error code of a CreatePermission for `peer`, `None` on success.
    pub async fn permission(&mut self, peer: SocketAddr) -> Option<u16> {
        use sipedge::core::turn::server::CREATE_PERMISSION;
        use sipedge::core::turn::stun::attr;
        let answer = self
            .request(CREATE_PERMISSION, |w| {
                w.xor_address(attr::XOR_PEER_ADDRESS, peer);
            })
            .await;
        error_code(&answer)
    }

    /// The error code of a ChannelBind of `number` to `peer`, `None` on success.
    pub async fn bind_channel(&mut self, number: u16, peer: SocketAddr) -> Option<u16> {
        use sipedge::core::turn::server::CHANNEL_BIND;
        use sipedge::core::turn::stun::attr;
        let answer = self
            .request(CHANNEL_BIND, |w| {
                let n = number.to_be_bytes();
                w.attr(attr::CHANNEL_NUMBER, &[n[0], n[1], 0, 0])
                    .xor_address(attr::XOR_PEER_ADDRESS, peer);
            })
            .await;
        error_code(&answer)
    }
}

/// The ERROR-CODE of a STUN answer (class * 100 + number), `None` for a success.
pub fn error_code(msg: &[u8]) -> Option<u16> {
    let v = attr_value(msg, sipedge::core::turn::stun::attr::ERROR_CODE)?;
    Some(u16::from(v[2] & 7) * 100 + u16::from(v[3]))
}

/// Held by the tests that run `sipedge run` on the embedded default, whose ports are
/// fixed (5061, 5070, 9095, 3478): one at a time.
pub fn default_ports() -> std::sync::MutexGuard<'static, ()> {
    static PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    PORTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the embedded default's ports are free on this machine (says which is not).
pub fn default_ports_free() -> bool {
    for addr in [
        "127.0.0.1:5061",
        "127.0.0.1:5070",
        "127.0.0.2:5061",
        "127.0.0.2:9095",
        "127.0.0.1:3478",
        "127.0.0.2:3478",
    ] {
        if std::net::TcpListener::bind(addr).is_err() {
            eprintln!("SKIPPED: {addr} is in use on this machine");
            return false;
        }
    }
    for addr in ["127.0.0.1:3478", "127.0.0.2:3478"] {
        if std::net::UdpSocket::bind(addr).is_err() {
            eprintln!("SKIPPED: UDP {addr} is in use on this machine");
            return false;
        }
    }
    true
}

/// `sipedge run` (`bin`) on the embedded default, its state in `state`, reaped from the start
/// (a failed assertion must not leave an edge running): the process and what it printed up
/// to the start-up line that names the listeners.
pub fn run_default(bin: &str, state: &Path) -> (Reaped, Vec<String>) {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let mut child = Reaped(
        Command::new(bin)
            .arg("run")
            .env("SIPEDGE_STATE_DIR", state)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let done = line.contains("external TLS SIP on");
        seen.push(line);
        if done {
            break;
        }
    }
    // The rest is read and dropped: the edge prints when it stops, to a pipe still open.
    std::thread::spawn(move || lines.for_each(drop));
    (child, seen)
}
