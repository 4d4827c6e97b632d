//! A client worker: this bench's own binary run again with `--client-worker`, one process
//! per share of the clients (each under the open-file limit), on one current-thread tokio
//! runtime. It reads commands from stdin, one a line, and answers each with one line on
//! stdout (`key=value` words, `err=` last and to the end of the line):
//!
//! - `open N`: open connections until it holds N. Each: a TCP connection from a loopback
//!   source address of its own (or the worker's one address with `--shared-source`), a full
//!   TLS handshake (resumption off: every remote user is a device of its own), one OPTIONS
//!   through the edge that the Director stub answers 200, then held idle with RFC 5626 CRLF
//!   keep-alives ("\r\n\r\n" ping, "\r\n" pong) every `--ping-ms`, the first at a point of
//!   the interval of its own so that pings are spread evenly. Answers
//!   `open held= opened= failed= full= resumed= cpu= ms= err=` (cpu: this process's
//!   utime + stime in clock ticks over the command).
//! - `check`: `check held= closed= pings= pongs= late= unexpected=`: connections held now,
//!   closed by the edge (or on an error) while held, keep-alives sent and answered, pings
//!   not answered within 10 s (RFC 5626 §4.4.1), bytes that were not a pong.
//! - `close`: every held connection sends close_notify and closes; `closed held= closed=`.
//!   A later `open` starts again from the first source address: the same users reconnect.
//! - `hs n=N p=P mode=full|resumed tls=1.3|1.2`: N handshakes by P clients in parallel,
//!   each client one after the other, every connection closed as soon as its handshake is
//!   done (TLS 1.3: once the edge's first session ticket has arrived, in both modes). With
//!   `resumed` each client first makes one handshake that is not counted, to hold a ticket,
//!   then answers `primed failed= err=` and waits for `go` (the parent reads the edge's CPU
//!   in between). Answers `hs done= failed= full= resumed= cpu= ms= err=`.
//! - `exit`, or the end of stdin (the parent is gone): closes everything and exits.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::{ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::support::{split_message, EDGE_FQDN};
use super::{cpu_ticks, TlsVersion};

/// RFC 5626 §4.4.1: a pong later than this means the flow failed.
const PONG_WAIT: Duration = Duration::from_secs(10);
/// How long a resumed client waits for the session tickets after its handshake.
const TICKET_WAIT: Duration = Duration::from_secs(1);

/// The worker's options, as the parent passes them.
pub struct Config {
    pub id: usize,
    pub edge: SocketAddr,
    pub ca: PathBuf,
    pub ping: Duration,
    pub concurrency: usize,
    pub timeout: Duration,
    pub max_failures: usize,
    pub shared_source: bool,
}

impl Config {
    /// The arguments after `--client-worker`.
    pub fn parse(args: &[String]) -> Result<Config, String> {
        let mut cfg = Config {
            id: 0,
            edge: "127.0.0.1:5061".parse().map_err(|e| format!("{e}"))?,
            ca: PathBuf::new(),
            ping: Duration::from_secs(30),
            concurrency: 8,
            timeout: Duration::from_secs(10),
            max_failures: 20,
            shared_source: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
            let num = |v: &String| v.parse::<u64>().map_err(|e| format!("{a}: {e}"));
            match a.as_str() {
                "--id" => cfg.id = num(value()?)? as usize,
                "--edge" => cfg.edge = value()?.parse().map_err(|e| format!("--edge: {e}"))?,
                "--ca" => cfg.ca = PathBuf::from(value()?),
                "--ping-ms" => cfg.ping = Duration::from_millis(num(value()?)?.max(1)),
                "--concurrency" => cfg.concurrency = num(value()?)?.max(1) as usize,
                "--timeout-ms" => cfg.timeout = Duration::from_millis(num(value()?)?.max(1)),
                "--max-failures" => cfg.max_failures = num(value()?)?.max(1) as usize,
                "--shared-source" => cfg.shared_source = true,
                other => return Err(format!("worker: unknown argument {other:?}")),
            }
        }
        if cfg.id > 19 {
            return Err("worker: --id must be below 20".into());
        }
        Ok(cfg)
    }

    /// Where the idle connection number `i` of this worker comes from: 127.(100 + id).x.y,
    /// an address of its own (every remote user its own source, as on the Internet, so the
    /// firewall's per-source limits hold at their defaults), or 127.(100 + id).0.1 for all
    /// with `--shared-source`.
    fn source(&self, i: usize) -> IpAddr {
        let w = 100 + self.id as u8;
        if self.shared_source {
            IpAddr::V4(Ipv4Addr::new(127, w, 0, 1))
        } else {
            IpAddr::V4(Ipv4Addr::new(
                127,
                w,
                (i / 250 % 256) as u8,
                (i % 250 + 1) as u8,
            ))
        }
    }
}

/// The source of handshake-phase connection `k`: 127.99.x.y, a new one each time (64 000
/// before one comes round again).
fn hs_source(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        99,
        (k / 250 % 256) as u8,
        (k % 250 + 1) as u8,
    ))
}

/// What the held connections count, all together.
#[derive(Default)]
struct Counters {
    held: AtomicU64,
    closed: AtomicU64,
    pings: AtomicU64,
    pongs: AtomicU64,
    late: AtomicU64,
    unexpected: AtomicU64,
}

pub fn client_config(
    roots: &RootCertStore,
    version: TlsVersion,
    resumption: bool,
) -> Result<Arc<ClientConfig>, String> {
    let versions: &[&SupportedProtocolVersion] = match version {
        TlsVersion::V13 => &[&rustls::version::TLS13],
        TlsVersion::V12 => &[&rustls::version::TLS12],
    };
    let mut cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .map_err(|e| format!("client config: {e}"))?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
    cfg.resumption = if resumption {
        Resumption::in_memory_sessions(16)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(cfg))
}

pub fn main(args: &[String]) -> ExitCode {
    let cfg = match Config::parse(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("worker {}: runtime: {e}", cfg.id);
            return ExitCode::FAILURE;
        }
    };
    // Commands come from a thread of their own (stdin is blocking); its end closes the channel.
    let (tx, rx) = mpsc::channel::<String>(16);
    let reader = std::thread::Builder::new()
        .name("worker-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = reader {
        eprintln!("worker {}: stdin thread: {e}", cfg.id);
        return ExitCode::FAILURE;
    }
    match rt.block_on(serve(cfg, rx)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: Config, mut commands: mpsc::Receiver<String>) -> Result<(), String> {
    let pem = std::fs::read(&cfg.ca).map_err(|e| format!("{}: {e}", cfg.ca.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls_pki_types::CertificateDer<'static> =
            cert.map_err(|e| format!("CA PEM: {e}"))?;
        roots.add(cert).map_err(|e| format!("CA: {e}"))?;
    }
    let idle_tls = client_config(&roots, TlsVersion::V13, false)?;
    let counters = Arc::new(Counters::default());
    let (mut stop_tx, mut stop_rx) = watch::channel(false);
    let mut holders: JoinSet<()> = JoinSet::new();
    let mut next_index = 0usize;
    let mut next_hs = 0usize;
    while let Some(line) = commands.recv().await {
        let mut words = line.split_whitespace();
        let answer = match words.next() {
            Some("open") => {
                let target = words.next().and_then(|w| w.parse::<usize>().ok());
                match target {
                    Some(target) => {
                        let ramp = Ramp {
                            cfg: &cfg,
                            tls: &idle_tls,
                            counters: &counters,
                            stop: &stop_rx,
                        };
                        ramp.open(target, &mut holders, &mut next_index).await
                    }
                    None => "error open needs a count".into(),
                }
            }
            // A new remote user while the others are held: a connection from a source of
            // its own, the handshake, one OPTIONS answered through the edge, closed.
            Some("probe") => {
                let k = next_hs;
                next_hs += 1;
                let t0 = Instant::now();
                let (_, result) = connect_and_ask(
                    idle_tls.clone(),
                    cfg.edge,
                    hs_source(k),
                    (cfg.id, k),
                    cfg.timeout,
                )
                .await;
                match result {
                    Ok((mut stream, _)) => {
                        let _ = stream.shutdown().await;
                        format!("probe ok=1 ms={}", t0.elapsed().as_millis())
                    }
                    Err(e) => format!("probe ok=0 why={}", e.replace(' ', "_")),
                }
            }
            Some("check") => {
                // Reap what ended, so `held` is exact.
                while holders.try_join_next().is_some() {}
                let c = &counters;
                format!(
                    "check held={} closed={} pings={} pongs={} late={} unexpected={}",
                    c.held.load(Relaxed),
                    c.closed.load(Relaxed),
                    c.pings.load(Relaxed),
                    c.pongs.load(Relaxed),
                    c.late.load(Relaxed),
                    c.unexpected.load(Relaxed),
                )
            }
            Some("close") => {
                let _ = stop_tx.send(true);
                let deadline = Instant::now() + Duration::from_secs(30);
                while timeout(
                    deadline.saturating_duration_since(Instant::now()),
                    holders.join_next(),
                )
                .await
                .ok()
                .flatten()
                .is_some()
                {}
                holders.abort_all();
                while holders.join_next().await.is_some() {}
                (stop_tx, stop_rx) = watch::channel(false);
                // A later `open` connects the same users again (the same source addresses).
                next_index = 0;
                format!(
                    "closed held={} closed={}",
                    counters.held.load(Relaxed),
                    counters.closed.load(Relaxed)
                )
            }
            Some("hs") => {
                let mut n = 0usize;
                let mut p = 1usize;
                let mut resumed = false;
                let mut version = TlsVersion::V13;
                for w in words {
                    match w.split_once('=') {
                        Some(("n", v)) => n = v.parse().unwrap_or(0),
                        Some(("p", v)) => p = v.parse::<usize>().unwrap_or(1).max(1),
                        Some(("mode", v)) => resumed = v == "resumed",
                        Some(("tls", "1.2")) => version = TlsVersion::V12,
                        _ => {}
                    }
                }
                let run = Handshakes {
                    n,
                    p,
                    resumed,
                    version,
                };
                run.run(&cfg, &roots, &mut next_hs, &mut commands).await
            }
            Some("exit") => break,
            _ => format!("error unknown command {line:?}"),
        };
        println!("{answer}");
    }
    let _ = stop_tx.send(true);
    let _ = timeout(Duration::from_secs(10), async {
        while holders.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

fn server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls_pki_types::DnsName::try_from(EDGE_FQDN)
            .expect("a DNS name")
            .to_owned(),
    )
}

/// One `open` command's context.
struct Ramp<'a> {
    cfg: &'a Config,
    tls: &'a Arc<ClientConfig>,
    counters: &'a Arc<Counters>,
    stop: &'a watch::Receiver<bool>,
}

impl Ramp<'_> {
    /// Opens connections (`concurrency` at a time) until `target` are held, or until
    /// `max_failures` failed.
    async fn open(
        &self,
        target: usize,
        holders: &mut JoinSet<()>,
        next_index: &mut usize,
    ) -> String {
        let cfg = self.cfg;
        let cpu0 = cpu_ticks("self").unwrap_or(0);
        let t0 = Instant::now();
        let mut inflight = JoinSet::new();
        let (mut opened, mut failed, mut full, mut resumed) = (0usize, 0usize, 0usize, 0usize);
        let mut first_err: Option<String> = None;
        let mut have = self.counters.held.load(Relaxed) as usize;
        loop {
            while have + inflight.len() < target
                && inflight.len() < cfg.concurrency
                && failed < cfg.max_failures
            {
                let i = *next_index;
                *next_index += 1;
                inflight.spawn(connect_and_ask(
                    self.tls.clone(),
                    cfg.edge,
                    cfg.source(i),
                    (cfg.id, i),
                    cfg.timeout,
                ));
            }
            let Some(joined) = inflight.join_next().await else {
                break;
            };
            match joined {
                Ok((i, Ok((stream, kind)))) => {
                    opened += 1;
                    have += 1;
                    match kind {
                        HandshakeKind::Resumed => resumed += 1,
                        _ => full += 1,
                    }
                    self.counters.held.fetch_add(1, Relaxed);
                    // The first ping at a point of the interval of its own (golden-ratio
                    // spread), the next ones every interval after it.
                    let phase = (i as f64 * 0.618_033_988_749_895).fract();
                    let first = cfg.ping.mul_f64(phase.max(0.001));
                    holders.spawn(hold(
                        stream,
                        self.counters.clone(),
                        first,
                        cfg.ping,
                        self.stop.clone(),
                    ));
                }
                Ok((i, Err(e))) => {
                    failed += 1;
                    first_err.get_or_insert_with(|| format!("connection {i}: {e}"));
                }
                Err(e) => {
                    failed += 1;
                    first_err.get_or_insert_with(|| format!("task: {e}"));
                }
            }
        }
        let cpu = cpu_ticks("self").unwrap_or(0).saturating_sub(cpu0);
        format!(
            "open held={} opened={opened} failed={failed} full={full} resumed={resumed} cpu={cpu} ms={} err={}",
            self.counters.held.load(Relaxed),
            t0.elapsed().as_millis(),
            first_err.unwrap_or_else(|| "-".into()),
        )
    }
}

/// A TCP connection from `source`, the TLS handshake, then one OPTIONS through the edge
/// and its 200 from the Director stub.
async fn connect_and_ask(
    tls: Arc<ClientConfig>,
    edge: SocketAddr,
    source: IpAddr,
    (w, i): (usize, usize),
    wait: Duration,
) -> (usize, Result<(TlsStream<TcpStream>, HandshakeKind), String>) {
    let result = async {
        let (mut stream, kind) = handshake(tls, edge, source, wait).await?;
        let local = stream
            .get_ref()
            .0
            .local_addr()
            .map_err(|e| format!("local address: {e}"))?;
        let request = format!(
            "OPTIONS sip:bob@sipedge.test SIP/2.0\r\n\
             Via: SIP/2.0/TLS {local};branch=z9hG4bK-idle-{w}-{i};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:user{w}x{i}@sipedge.test>;tag=t{i}\r\n\
             To: <sip:bob@sipedge.test>\r\n\
             Call-ID: idle-{w}-{i}@tls-idle\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let exchange = async {
            stream.write_all(request.as_bytes()).await?;
            stream.flush().await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 2048];
            loop {
                while let Some(m) = split_message(&mut buf) {
                    if !m.starts_with(b"\r\n") {
                        return Ok::<_, std::io::Error>(Some(m));
                    }
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
        };
        match timeout(wait, exchange).await {
            Err(_) => Err("OPTIONS: no answer in time".to_string()),
            Ok(Err(e)) => Err(format!("OPTIONS: {e}")),
            Ok(Ok(None)) => Err("OPTIONS: the edge closed the connection".into()),
            Ok(Ok(Some(m))) if m.starts_with(b"SIP/2.0 200") => Ok((stream, kind)),
            Ok(Ok(Some(m))) => Err(format!(
                "OPTIONS answered {:?}",
                String::from_utf8_lossy(m.get(..m.len().min(40)).unwrap_or_default())
            )),
        }
    }
    .await;
    (i, result)
}

/// A TCP connection from `source` and a TLS handshake, each within `wait`.
async fn handshake(
    tls: Arc<ClientConfig>,
    edge: SocketAddr,
    source: IpAddr,
    wait: Duration,
) -> Result<(TlsStream<TcpStream>, HandshakeKind), String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let tcp = timeout(wait, socket.connect(edge))
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| format!("TCP connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream = timeout(wait, TlsConnector::from(tls).connect(server_name(), tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let kind = stream
        .get_ref()
        .1
        .handshake_kind()
        .unwrap_or(HandshakeKind::Full);
    Ok((stream, kind))
}

/// Holds one connection: a ping every `every` (the first after `first`), pongs counted,
/// until the edge closes it (counted) or the worker is told to close.
async fn hold(
    mut stream: TlsStream<TcpStream>,
    c: Arc<Counters>,
    first: Duration,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut next_ping = Instant::now() + first;
    let mut awaiting: Option<Instant> = None;
    let mut buf = [0u8; 64];
    let by_peer = loop {
        let wake = awaiting.map_or(next_ping, |d| d.min(next_ping));
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break true,
                Ok(n) => {
                    let got = buf.get(..n).unwrap_or_default();
                    let pongs = got.iter().filter(|&&b| b == b'\n').count() as u64;
                    let other = got.iter().filter(|&&b| b != b'\n' && b != b'\r').count() as u64;
                    if other > 0 {
                        c.unexpected.fetch_add(other, Relaxed);
                    }
                    if pongs > 0 {
                        c.pongs.fetch_add(pongs, Relaxed);
                        awaiting = None;
                    }
                }
            },
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if awaiting.is_some_and(|d| now >= d) {
                    c.late.fetch_add(1, Relaxed);
                    awaiting = None;
                }
                if now >= next_ping {
                    let sent = async {
                        stream.write_all(b"\r\n\r\n").await?;
                        stream.flush().await
                    };
                    if sent.await.is_err() {
                        break true;
                    }
                    c.pings.fetch_add(1, Relaxed);
                    awaiting.get_or_insert(now + PONG_WAIT);
                    next_ping += every;
                }
            }
            _ = stop.changed() => break false,
        }
    };
    if !by_peer {
        // A clean close: close_notify, then FIN.
        let _ = timeout(Duration::from_secs(2), stream.shutdown()).await;
    }
    c.held.fetch_sub(1, Relaxed);
    if by_peer {
        c.closed.fetch_add(1, Relaxed);
    }
}

/// One `hs` command: `n` handshakes by `p` clients in parallel.
struct Handshakes {
    n: usize,
    p: usize,
    resumed: bool,
    version: TlsVersion,
}

impl Handshakes {
    /// Primes the clients (resumed: one handshake each, not counted), answers `primed`, waits
    /// for `go` (the parent samples the edge's CPU in between), then runs the handshakes.
    async fn run(
        &self,
        cfg: &Config,
        roots: &RootCertStore,
        next_hs: &mut usize,
        commands: &mut mpsc::Receiver<String>,
    ) -> String {
        let Handshakes {
            n,
            p,
            resumed,
            version,
        } = *self;
        let mut slots = Vec::with_capacity(p);
        for _ in 0..p {
            match client_config(roots, version, resumed) {
                Ok(c) => slots.push(c),
                Err(e) => return format!("error {e}"),
            }
        }
        let base = *next_hs;
        *next_hs += n + p;
        let (edge, wait) = (cfg.edge, cfg.timeout);
        let mut err: Option<String> = None;
        let mut priming_failed = 0usize;
        // Resumed: every client first holds a ticket (not counted).
        if resumed {
            let mut priming = JoinSet::new();
            for (j, tls) in slots.iter().enumerate() {
                let tls = tls.clone();
                priming.spawn(async move { one(tls, edge, hs_source(base + j), wait).await });
            }
            while let Some(r) = priming.join_next().await {
                let e = match r {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => e,
                    Err(e) => format!("task: {e}"),
                };
                priming_failed += 1;
                err.get_or_insert(format!("priming: {e}"));
            }
        }
        println!(
            "primed failed={priming_failed} err={}",
            err.as_deref().unwrap_or("-")
        );
        match commands.recv().await.as_deref() {
            Some("go") => {}
            other => return format!("error expected go, got {other:?}"),
        }
        let cpu0 = cpu_ticks("self").unwrap_or(0);
        let t0 = Instant::now();
        let mut err: Option<String> = None;
        let mut clients = JoinSet::new();
        for (j, tls) in slots.into_iter().enumerate() {
            clients.spawn(async move {
                let (mut full, mut res, mut failed) = (0usize, 0usize, 0usize);
                let mut err = None;
                for k in (j..n).step_by(p) {
                    match one(tls.clone(), edge, hs_source(base + p + k), wait).await {
                        Ok(HandshakeKind::Resumed) => res += 1,
                        Ok(_) => full += 1,
                        Err(e) => {
                            failed += 1;
                            err.get_or_insert(e);
                        }
                    }
                }
                (full, res, failed, err)
            });
        }
        let (mut full, mut res, mut failed) = (0, 0, 0);
        while let Some(r) = clients.join_next().await {
            match r {
                Ok((f, r, x, e)) => {
                    full += f;
                    res += r;
                    failed += x;
                    if let Some(e) = e {
                        err.get_or_insert(e);
                    }
                }
                Err(e) => {
                    err.get_or_insert(format!("task: {e}"));
                }
            }
        }
        let cpu = cpu_ticks("self").unwrap_or(0).saturating_sub(cpu0);
        format!(
            "hs done={} failed={failed} full={full} resumed={res} cpu={cpu} ms={} err={}",
            full + res,
            t0.elapsed().as_millis(),
            err.unwrap_or_else(|| "-".into())
        )
    }
}

/// One handshake, the connection closed right after it: with TLS 1.3 once the edge's first
/// session ticket has arrived (the edge sends its tickets right after the client's Finished,
/// so the edge's share of the handshake is then complete, and a resuming client holds a
/// ticket for its next one), with TLS 1.2 at once (its ticket is part of the handshake).
async fn one(
    tls: Arc<ClientConfig>,
    edge: SocketAddr,
    source: IpAddr,
    wait: Duration,
) -> Result<HandshakeKind, String> {
    let (mut stream, kind) = handshake(tls, edge, source, wait).await?;
    let tls13 = stream.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    if tls13 {
        timeout(TICKET_WAIT, first_ticket(&mut stream))
            .await
            .map_err(|_| "no session ticket in time".to_string())??;
    }
    Ok(kind)
}

/// Reads until the connection has processed a TLS 1.3 session ticket. No application data
/// comes, so a read stays pending: the ticket count is checked after every poll instead.
async fn first_ticket(stream: &mut TlsStream<TcpStream>) -> Result<(), String> {
    let mut buf = [0u8; 256];
    std::future::poll_fn(|cx| {
        let mut rb = ReadBuf::new(&mut buf);
        let pending = match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("before the ticket: {e}"))),
            Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                return Poll::Ready(Err("closed before the ticket".into()))
            }
            Poll::Ready(Ok(())) => false,
            Poll::Pending => true,
        };
        if stream.get_ref().1.tls13_tickets_received() > 0 {
            Poll::Ready(Ok(()))
        } else {
            // Pending: the read registered the waker. Ready with data (none is expected):
            // poll again.
            if !pending {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    })
    .await
}
