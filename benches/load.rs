//! Load tool and smoke test for the Access Edge: many remote users, each on its own TLS
//! connection from loopback sources 127.0.0.10.., run REGISTER, OPTIONS, MESSAGE and an INVITE
//! dialog (INVITE → 200 → ACK → BYE → 200) through an in-process edge to a Director stub that
//! answers everything but ACK with 200. The same workload then runs straight against a second
//! stub (mutual TLS, no edge) as the baseline, so the latency the edge adds can be reported.
//!
//! Run: `cargo bench --bench load -- [--users N] [--seconds S] [--dialogs-per-user K]
//! [--no-baseline]`. Exits non-zero if any request got no answer or a non-2xx answer, or if the
//! Director did not see exactly what the users sent. See benches/README.md.
//!
//! Threads: the edge runs on its own runtime (threads `edge-worker`), the two stubs on
//! another (`stub`), the users on a third (`load-gen`); CPU time per runtime is read from
//! `/proc/self/task/*/stat`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    unreachable_pub
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use sipedge::tls::{self, DevRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use support::{headers, split_message, topology, Director, Pki, DIRECTOR_NAME, EDGE_FQDN};

/// A request without a final answer within this is a failure (and ends that user's loop).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Users connect from 127.0.0.10 .. 127.0.0.(10 + SOURCE_IPS - 1).
const SOURCE_IPS: u8 = 16;
/// Thread names, by runtime.
const EDGE_THREADS: &str = "edge-worker";
const STUB_THREADS: &str = "stub";
const LOAD_THREADS: &str = "load-gen";

// ---------------------------------------------------------------------------------------------
// Arguments

struct Args {
    users: usize,
    seconds: f64,
    dialogs_per_user: usize,
    /// Rounds per second per user; 0 = closed loop, each user as fast as it is answered.
    rate: f64,
    baseline: bool,
}

const USAGE: &str = "usage: cargo bench --bench load -- [--users N (100)] [--seconds S (10)] \
                     [--dialogs-per-user K (10000)] [--rate R (0 = closed loop)] [--no-baseline]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        users: 100,
        seconds: 10.0,
        dialogs_per_user: 10_000,
        rate: 0.0,
        baseline: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--users" => {
                args.users = value("--users")?
                    .parse()
                    .map_err(|e| format!("--users: {e}"))?
            }
            "--seconds" => {
                args.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--dialogs-per-user" => {
                args.dialogs_per_user = value("--dialogs-per-user")?
                    .parse()
                    .map_err(|e| format!("--dialogs-per-user: {e}"))?
            }
            "--rate" => {
                args.rate = value("--rate")?
                    .parse()
                    .map_err(|e| format!("--rate: {e}"))?
            }
            "--no-baseline" => args.baseline = false,
            // cargo passes --bench to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.users == 0
        || args.dialogs_per_user == 0
        || !(args.seconds > 0.0 && args.seconds <= 3600.0)
    {
        return Err("--users and --dialogs-per-user must be > 0, --seconds in (0, 3600]".into());
    }
    if !(args.rate >= 0.0 && args.rate <= 1e6) {
        return Err("--rate must be in [0, 1e6]".into());
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// `(comm, utime + stime)` of a `stat` file's contents.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // After ") ": state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU ticks per thread name (live threads only) and for the whole process.
#[derive(Clone, Default)]
struct Cpu {
    by_comm: HashMap<String, u64>,
    process: u64,
}

impl Cpu {
    fn now() -> Cpu {
        let mut by_comm = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for task in dir.flatten() {
                let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                    continue;
                };
                if let Some((comm, ticks)) = parse_stat(&stat) {
                    *by_comm.entry(comm).or_insert(0) += ticks;
                }
            }
        }
        let process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s))
            .map_or(0, |(_, t)| t);
        Cpu { by_comm, process }
    }

    /// Seconds spent between `earlier` and `self` by threads named `comm`, and in total.
    fn since(&self, earlier: &Cpu, tck: f64) -> CpuSecs {
        let of = |comm: &str| {
            let a = self.by_comm.get(comm).copied().unwrap_or(0);
            let b = earlier.by_comm.get(comm).copied().unwrap_or(0);
            a.saturating_sub(b) as f64 / tck
        };
        CpuSecs {
            edge: of(EDGE_THREADS),
            stub: of(STUB_THREADS),
            load: of(LOAD_THREADS),
            process: self.process.saturating_sub(earlier.process) as f64 / tck,
        }
    }
}

#[derive(Clone, Copy, Default)]
struct CpuSecs {
    edge: f64,
    stub: f64,
    load: f64,
    process: f64,
}

// ---------------------------------------------------------------------------------------------
// Workload

/// Message types, in table order.
const TYPES: [&str; 6] = ["REGISTER", "OPTIONS", "MESSAGE", "INVITE", "ACK", "BYE"];
const REGISTER: usize = 0;
const OPTIONS: usize = 1;
const MESSAGE: usize = 2;
const INVITE: usize = 3;
const ACK: usize = 4;
const BYE: usize = 5;

/// Messages through the edge per request of each type (the request, and its answer but for ACK).
fn messages_per_request(t: usize) -> u64 {
    if t == ACK {
        1
    } else {
        2
    }
}

/// Counts requests by method (what a Director stub received).
#[derive(Default)]
struct MethodCounts([AtomicU64; 6]);

impl MethodCounts {
    fn add(&self, text: &str) {
        let method = text.split(' ').next().unwrap_or("");
        if let Some(i) = TYPES.iter().position(|&t| t == method) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn get(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// A user's TLS connection (to the edge, or straight to a stub for the baseline).
struct SipConn {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
    local: SocketAddr,
}

impl SipConn {
    async fn connect(
        cfg: Arc<ClientConfig>,
        name: ServerName<'static>,
        to: SocketAddr,
        source: IpAddr,
    ) -> std::io::Result<SipConn> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket.connect(to).await?;
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        let stream = TlsConnector::from(cfg).connect(name, tcp).await?;
        Ok(SipConn {
            stream,
            buf: Vec::with_capacity(8192),
            local,
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.stream.flush().await.map_err(|e| format!("flush: {e}"))
    }

    /// The final response to the request with CSeq `cseq` (provisional ones are skipped).
    async fn final_response(&mut self, cseq: &str) -> Result<(u16, String), String> {
        let deadline = tokio::time::Instant::from_std(Instant::now() + ANSWER_TIMEOUT);
        loop {
            while let Some(m) = split_message(&mut self.buf) {
                let text = String::from_utf8(m).map_err(|_| "answer is not UTF-8".to_string())?;
                let Some(rest) = text.strip_prefix("SIP/2.0 ") else {
                    continue;
                };
                let status: u16 = rest
                    .get(..3)
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad status line")?;
                if status < 200 {
                    continue;
                }
                if headers(&text, "CSeq").first() != Some(&cseq) {
                    return Err(format!("answer for another CSeq (wanted {cseq}): {text:?}"));
                }
                return Ok((status, text));
            }
            let mut chunk = [0u8; 16384];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(format!("no answer to {cseq} within {ANSWER_TIMEOUT:?}")),
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Ok(Ok(0)) => return Err(format!("connection closed while waiting for {cseq}")),
                Ok(Ok(n)) => n,
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Failures: all counted, the first few kept for the report.
#[derive(Clone, Default)]
struct Failures {
    count: u64,
    first: Vec<String>,
}

impl Failures {
    const KEEP: usize = 10;

    fn push(&mut self, what: String) {
        self.count += 1;
        if self.first.len() < Self::KEEP {
            self.first.push(what);
        }
    }

    fn absorb(&mut self, other: Failures, prefix: &str) {
        self.count += other.count;
        let room = Self::KEEP.saturating_sub(self.first.len());
        self.first.extend(
            other
                .first
                .into_iter()
                .take(room)
                .map(|f| format!("{prefix}{f}")),
        );
    }
}

/// What one user did.
#[derive(Default)]
struct UserResult {
    /// Requests sent, by type.
    sent: [u64; 6],
    /// Latency (µs) of request → 2xx final response, by type (ACK has none).
    latency_us: [Vec<u32>; 6],
    /// Non-2xx answers, missing answers, broken connections.
    failures: Failures,
}

/// What a step of the loop concluded.
enum Step {
    /// A 2xx answer (its text).
    Ok(String),
    /// A non-2xx answer: recorded; the loop goes on.
    Refused,
}

struct User {
    conn: SipConn,
    name: String,
    local: String,
    seq: u64,
    cseq: u32,
    result: UserResult,
}

const SDP_OFFER: &str = "v=0\r\n\
    o=alice 2890844526 2890844526 IN IP4 192.168.1.5\r\n\
    s=-\r\n\
    c=IN IP4 192.168.1.5\r\n\
    t=0 0\r\n\
    m=audio 49170 RTP/SAVP 0 8 101\r\n\
    a=rtpmap:0 PCMU/8000\r\n\
    a=rtpmap:8 PCMA/8000\r\n\
    a=rtpmap:101 telephone-event/8000\r\n\
    a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n";

impl User {
    /// A request's head up to and including CSeq; the caller adds the rest.
    fn head(
        &mut self,
        method: &str,
        ruri: &str,
        call_id: &str,
        from_tag: &str,
        to: &str,
        cseq: u32,
    ) -> String {
        self.seq += 1;
        format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/TLS {local};branch=z9hG4bK-{name}-{seq};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{name}@sipedge.test>;tag={from_tag}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n",
            local = self.local,
            name = self.name,
            seq = self.seq,
        )
    }

    fn next_cseq(&mut self) -> u32 {
        self.cseq += 1;
        self.cseq
    }

    /// Sends a request and waits for its final answer; `Err` ends this user's loop.
    async fn transact(&mut self, t: usize, msg: &str, cseq: &str) -> Result<Step, String> {
        let started = Instant::now();
        self.result.sent[t] += 1;
        self.conn.send(msg.as_bytes()).await?;
        let (status, text) = self.conn.final_response(cseq).await?;
        if (200..300).contains(&status) {
            let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            self.result.latency_us[t].push(us);
            Ok(Step::Ok(text))
        } else {
            self.result
                .failures
                .push(format!("{} answered {status}", TYPES[t]));
            Ok(Step::Refused)
        }
    }

    async fn one_round(&mut self, k: usize) -> Result<(), String> {
        let name = self.name.clone();
        let aor = format!("<sip:{name}@sipedge.test>");

        // REGISTER (one Call-ID per user, CSeq going up: RFC 3261 §10.2).
        let cseq = self.next_cseq();
        let mut m = self.head(
            "REGISTER",
            "sip:sipedge.test",
            &format!("reg-{name}@load"),
            &format!("r{name}"),
            &aor,
            cseq,
        );
        let _ = write!(
            m,
            "Contact: <sip:{name}@{};transport=tls;ob>\r\nExpires: 600\r\nSupported: path, outbound\r\nContent-Length: 0\r\n\r\n",
            self.local
        );
        self.transact(REGISTER, &m, &format!("{cseq} REGISTER"))
            .await?;

        // OPTIONS.
        let cseq = self.next_cseq();
        let mut m = self.head(
            "OPTIONS",
            "sip:bob@sipedge.test",
            &format!("opt-{name}-{k}@load"),
            &format!("o{k}"),
            "<sip:bob@sipedge.test>",
            cseq,
        );
        m.push_str("Accept: application/sdp\r\nContent-Length: 0\r\n\r\n");
        self.transact(OPTIONS, &m, &format!("{cseq} OPTIONS"))
            .await?;

        // MESSAGE.
        let cseq = self.next_cseq();
        let body = format!("hello from {name}, round {k}");
        let mut m = self.head(
            "MESSAGE",
            "sip:bob@sipedge.test",
            &format!("msg-{name}-{k}@load"),
            &format!("m{k}"),
            "<sip:bob@sipedge.test>",
            cseq,
        );
        let _ = write!(
            m,
            "Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.transact(MESSAGE, &m, &format!("{cseq} MESSAGE"))
            .await?;

        // INVITE → 200 → ACK → BYE → 200.
        let call_id = format!("call-{name}-{k}@load");
        let tag = format!("i{k}");
        let cseq = self.next_cseq();
        let mut m = self.head(
            "INVITE",
            "sip:bob@sipedge.test",
            &call_id,
            &tag,
            "<sip:bob@sipedge.test>",
            cseq,
        );
        let _ = write!(
            m,
            "Contact: <sip:{name}@{};transport=tls;ob>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_OFFER}",
            self.local,
            SDP_OFFER.len()
        );
        let Step::Ok(ok) = self.transact(INVITE, &m, &format!("{cseq} INVITE")).await? else {
            return Ok(());
        };
        // The dialog: the UAS's To (with its tag), and the route set from Record-Route, reversed.
        let to = headers(&ok, "To")
            .first()
            .map(|s| s.to_string())
            .ok_or("200 OK without To")?;
        let mut route: Vec<String> = headers(&ok, "Record-Route")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|e| e.trim().to_string())
            .collect();
        route.reverse();
        let route = if route.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", route.join(", "))
        };

        let mut m = self.head("ACK", "sip:bob@sipedge.test", &call_id, &tag, &to, cseq);
        let _ = write!(m, "{route}Content-Length: 0\r\n\r\n");
        self.result.sent[ACK] += 1;
        self.conn.send(m.as_bytes()).await?;

        let cseq = self.next_cseq();
        let mut m = self.head("BYE", "sip:bob@sipedge.test", &call_id, &tag, &to, cseq);
        let _ = write!(m, "{route}Content-Length: 0\r\n\r\n");
        self.transact(BYE, &m, &format!("{cseq} BYE")).await?;
        Ok(())
    }
}

/// When to run rounds: `None` as fast as answers come, else one round per tick.
struct Pace {
    start: Instant,
    deadline: Instant,
    /// Rounds per second per user (0 = closed loop).
    rate: f64,
    users: usize,
}

async fn run_user(conn: SipConn, index: usize, rounds: usize, pace: Pace) -> UserResult {
    let mut user = User {
        local: conn.local.to_string(),
        conn,
        name: format!("u{index}"),
        seq: 0,
        cseq: 0,
        result: UserResult::default(),
    };
    // Paced users start spread over one period, so ticks do not all fall together.
    let mut ticker = (pace.rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(1.0 / pace.rate);
        let offset = period.mul_f64(index as f64 / pace.users as f64);
        let mut t =
            tokio::time::interval_at(tokio::time::Instant::from_std(pace.start + offset), period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    for k in 0..rounds {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        if Instant::now() >= pace.deadline {
            break;
        }
        if let Err(e) = user.one_round(k).await {
            user.result.failures.push(format!("{}: {e}", user.name));
            break;
        }
    }
    let _ = user.conn.stream.shutdown().await;
    user.result
}

// ---------------------------------------------------------------------------------------------
// Phases

/// Where a phase's users connect.
struct Target {
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    name: ServerName<'static>,
}

struct PhaseResult {
    users: usize,
    connected: usize,
    connect_secs: f64,
    elapsed_secs: f64,
    sent: [u64; 6],
    latency_us: [Vec<u32>; 6],
    failures: Failures,
    /// CPU during the connect (TLS handshakes) and the message phases.
    connect_cpu: CpuSecs,
    cpu: CpuSecs,
}

impl PhaseResult {
    fn messages(&self) -> u64 {
        (0..6).map(|t| self.sent[t] * messages_per_request(t)).sum()
    }

    fn all_latencies(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self.latency_us.iter().flatten().copied().collect();
        all.sort_unstable();
        all
    }
}

fn source_ip(i: usize) -> IpAddr {
    let last = 10 + (i % usize::from(SOURCE_IPS)) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn run_phase(
    load: &tokio::runtime::Runtime,
    target: &Target,
    args: &Args,
    tck: f64,
) -> PhaseResult {
    let cpu0 = Cpu::now();
    let t0 = Instant::now();
    // Connect everybody first, so handshakes are not mixed into the message figures.
    let mut connecting = JoinSet::new();
    for i in 0..args.users {
        let (tls, name, addr) = (target.tls.clone(), target.name.clone(), target.addr);
        connecting.spawn_on(
            async move { (i, SipConn::connect(tls, name, addr, source_ip(i)).await) },
            load.handle(),
        );
    }
    let mut conns = Vec::with_capacity(args.users);
    let mut failures = Failures::default();
    load.block_on(async {
        while let Some(joined) = connecting.join_next().await {
            match joined {
                Ok((i, Ok(c))) => conns.push((i, c)),
                Ok((i, Err(e))) => failures.push(format!("user {i}: connect: {e}")),
                Err(e) => failures.push(format!("connect task: {e}")),
            }
        }
    });
    let connect_secs = t0.elapsed().as_secs_f64();
    let connected = conns.len();

    let cpu1 = Cpu::now();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut users = JoinSet::new();
    for (i, conn) in conns {
        let pace = Pace {
            start,
            deadline,
            rate: args.rate,
            users: args.users,
        };
        users.spawn_on(
            run_user(conn, i, args.dialogs_per_user, pace),
            load.handle(),
        );
    }
    let mut result = PhaseResult {
        users: args.users,
        connected,
        connect_secs,
        elapsed_secs: 0.0,
        sent: [0; 6],
        latency_us: Default::default(),
        failures,
        connect_cpu: cpu1.since(&cpu0, tck),
        cpu: CpuSecs::default(),
    };
    load.block_on(async {
        while let Some(joined) = users.join_next().await {
            match joined {
                Ok(r) => {
                    for t in 0..6 {
                        result.sent[t] += r.sent[t];
                        result.latency_us[t].extend_from_slice(&r.latency_us[t]);
                    }
                    result.failures.absorb(r.failures, "");
                }
                Err(e) => result.failures.push(format!("user task: {e}")),
            }
        }
    });
    result.elapsed_secs = start.elapsed().as_secs_f64();
    result.cpu = Cpu::now().since(&cpu1, tck);
    for l in &mut result.latency_us {
        l.sort_unstable();
    }
    result
}

/// Starts a Director stub answering 200, and a task that counts (and drops) what it receives.
fn start_stub(
    rt: &tokio::runtime::Runtime,
    pki: &Pki,
    stop: &Arc<AtomicBool>,
) -> (SocketAddr, Arc<MethodCounts>) {
    let mut director = rt.block_on(Director::start(pki));
    *director.auto_answer.lock().unwrap() = Some(200);
    let addr = director.addr;
    let counts = Arc::new(MethodCounts::default());
    let (c, stop) = (counts.clone(), stop.clone());
    rt.spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Some(r) = director.try_recv(Duration::from_millis(100)).await {
                c.add(&r.text);
            }
        }
        director.kill();
    });
    (addr, counts)
}

/// Waits (bounded) until a stub has received what the users sent; the mismatches if not.
fn check_stub(counts: &MethodCounts, sent: &[u64; 6]) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(5);
    while counts.get() != *sent && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = counts.get();
    (0..6)
        .filter(|&t| got[t] != sent[t])
        .map(|t| {
            format!(
                "Director received {} {} requests, users sent {}",
                got[t], TYPES[t], sent[t]
            )
        })
        .collect()
}

fn runtime(name: &str, workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// Report

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn fmt_us(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn diff(a: Option<u32>, b: Option<u32>) -> Option<i64> {
    Some(i64::from(a?) - i64::from(b?))
}

fn json_opt(v: Option<i64>) -> String {
    v.map_or_else(|| "null".into(), |v| v.to_string())
}

struct EdgeCounters {
    forwarded: u64,
    rejected: u64,
    dropped: u64,
}

fn edge_counters(shared: &sipedge::shell::Shared) -> EdgeCounters {
    let s = &shared.stats;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    EdgeCounters {
        forwarded: get(&s.forwarded_from_external) + get(&s.forwarded_from_internal),
        rejected: get(&s.rejected_external) + get(&s.rejected_internal),
        dropped: get(&s.dropped_responses),
    }
}

fn report(
    args: &Args,
    edge: &PhaseResult,
    base: Option<&PhaseResult>,
    forwarded: u64,
    failures: &Failures,
) {
    let secs = edge.elapsed_secs;
    println!();
    println!(
        "sipedge load: {} users from {} source IPs, limits {} s and {} rounds per user \
         (round = REGISTER, OPTIONS, MESSAGE, INVITE+ACK+BYE), {}",
        args.users,
        SOURCE_IPS.min(u8::try_from(args.users).unwrap_or(u8::MAX)),
        args.seconds,
        args.dialogs_per_user,
        if args.rate > 0.0 {
            format!("paced at {} rounds/s per user", args.rate)
        } else {
            "closed loop".to_string()
        }
    );
    println!();
    println!("phase      connected  connect  elapsed   messages  msgs/s   CPU-s: edge   stub  load-gen  process");
    let row = |name: &str, p: &PhaseResult| {
        println!(
            "{name:<10} {:>5}/{:<5} {:>6.2}s {:>7.2}s {:>10} {:>7.0}        {:>6.2} {:>6.2} {:>8.2} {:>8.2}",
            p.connected,
            p.users,
            p.connect_secs,
            p.elapsed_secs,
            p.messages(),
            p.messages() as f64 / p.elapsed_secs,
            p.cpu.edge,
            p.cpu.stub,
            p.cpu.load,
            p.cpu.process
        )
    };
    row("with edge", edge);
    if let Some(b) = base {
        row("baseline", b);
    }
    println!();
    println!(
        "latency request -> final response, µs (client side; 'added' = with edge minus baseline)"
    );
    println!(
        "type        requests  msgs/s(edge)   p50 edge  p99 edge   p50 base  p99 base   added p50  added p99"
    );
    let line = |name: &str, count: u64, msgs: u64, e: &[u32], b: Option<&[u32]>| {
        let (e50, e99) = (pct(e, 50.0), pct(e, 99.0));
        let (b50, b99) = b.map_or((None, None), |b| (pct(b, 50.0), pct(b, 99.0)));
        println!(
            "{name:<10} {count:>9} {:>13.0} {:>10} {:>9} {:>10} {:>9} {:>11} {:>10}",
            msgs as f64 / secs,
            fmt_us(e50.map(i64::from)),
            fmt_us(e99.map(i64::from)),
            fmt_us(b50.map(i64::from)),
            fmt_us(b99.map(i64::from)),
            fmt_us(diff(e50, b50)),
            fmt_us(diff(e99, b99)),
        );
    };
    for (t, name) in TYPES.iter().enumerate() {
        let b = base.map(|b| b.latency_us[t].as_slice());
        line(
            name,
            edge.sent[t],
            edge.sent[t] * messages_per_request(t),
            &edge.latency_us[t],
            b,
        );
    }
    let all_e = edge.all_latencies();
    let all_b = base.map(PhaseResult::all_latencies);
    let total: u64 = edge.sent.iter().sum();
    line("all", total, edge.messages(), &all_e, all_b.as_deref());

    let per_cpu = if edge.cpu.edge > 0.0 {
        forwarded as f64 / edge.cpu.edge
    } else {
        0.0
    };
    println!();
    println!(
        "edge: {forwarded} messages forwarded (its own counter; users' count {}), {:.2} CPU-s \
         = {per_cpu:.0} messages per edge CPU-second ({:.1} µs CPU per message); \
         {} TLS handshakes took {:.2} edge CPU-s",
        edge.messages(),
        edge.cpu.edge,
        if forwarded > 0 {
            edge.cpu.edge * 1e6 / forwarded as f64
        } else {
            0.0
        },
        edge.connected,
        edge.connect_cpu.edge
    );
    println!("failures: {}", failures.count);
    for f in &failures.first {
        println!("  {f}");
    }

    // One-line JSON summary.
    let mut j = String::new();
    let _ = write!(
        j,
        "{{\"users\":{},\"seconds_limit\":{},\"rounds_limit\":{},\"rate\":{},\"elapsed_s\":{:.3},\"connected\":{},\
         \"requests\":{total},\"messages\":{},\"messages_per_s\":{:.1},\"edge_forwarded\":{forwarded},\
         \"edge_cpu_s\":{:.3},\"messages_per_edge_cpu_s\":{per_cpu:.1},\"handshake_edge_cpu_s\":{:.3},\
         \"stub_cpu_s\":{:.3},\"load_cpu_s\":{:.3},\"process_cpu_s\":{:.3}",
        args.users,
        args.seconds,
        args.dialogs_per_user,
        args.rate,
        edge.elapsed_secs,
        edge.connected,
        edge.messages(),
        edge.messages() as f64 / secs,
        edge.cpu.edge,
        edge.connect_cpu.edge,
        edge.cpu.stub,
        edge.cpu.load,
        edge.cpu.process
    );
    let lat = |e: &[u32], b: Option<&[u32]>| {
        let (e50, e99) = (pct(e, 50.0), pct(e, 99.0));
        let (b50, b99) = b.map_or((None, None), |b| (pct(b, 50.0), pct(b, 99.0)));
        format!(
            "\"p50_us\":{},\"p99_us\":{},\"base_p50_us\":{},\"base_p99_us\":{},\"added_p50_us\":{},\"added_p99_us\":{}",
            json_opt(e50.map(i64::from)),
            json_opt(e99.map(i64::from)),
            json_opt(b50.map(i64::from)),
            json_opt(b99.map(i64::from)),
            json_opt(diff(e50, b50)),
            json_opt(diff(e99, b99))
        )
    };
    let _ = write!(j, ",{}", lat(&all_e, all_b.as_deref()));
    j.push_str(",\"types\":{");
    for (t, name) in TYPES.iter().enumerate() {
        if t > 0 {
            j.push(',');
        }
        let b = base.map(|b| b.latency_us[t].as_slice());
        let _ = write!(j, "\"{name}\":{{\"requests\":{}", edge.sent[t]);
        if t != ACK {
            let _ = write!(j, ",{}", lat(&edge.latency_us[t], b));
        }
        j.push('}');
    }
    let _ = write!(j, "}},\"failures\":{}}}", failures.count);
    println!("{j}");
}

// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let tck = clock_ticks_per_second();
    let edge_rt = runtime(EDGE_THREADS, 2);
    let stub_rt = runtime(STUB_THREADS, 2);
    let load_rt = runtime(LOAD_THREADS, 2);

    let pki = Pki::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (director, director_counts) = start_stub(&stub_rt, &pki, &stop);
    let mut topo = topology(&pki, &[director]);
    topo.limits.max_connections = topo.limits.max_connections.max(args.users + 64);
    let edge = edge_rt
        .block_on(sipedge::shell::start(&topo))
        .expect("edge starts");
    let up_by = Instant::now() + Duration::from_secs(10);
    while !edge.routes.pool.any_up() {
        if Instant::now() > up_by {
            eprintln!("the edge's next hop never came up");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // With the edge: remote users (server-authenticated TLS) to the external listener.
    let to_edge = Target {
        addr: edge.external,
        tls: tls::client_config_trusting(pki.roots(), None).expect("client TLS"),
        name: ServerName::try_from(EDGE_FQDN).expect("name"),
    };
    let before = edge_counters(&edge.shared);
    let with_edge = run_phase(&load_rt, &to_edge, &args, tck);
    let after = edge_counters(&edge.shared);
    let mut failures = with_edge.failures.clone();
    for f in check_stub(&director_counts, &with_edge.sent) {
        failures.push(f);
    }
    let forwarded = after.forwarded - before.forwarded;
    if after.rejected > before.rejected || after.dropped > before.dropped {
        failures.push(format!(
            "edge rejected {} and dropped {} messages",
            after.rejected - before.rejected,
            after.dropped - before.dropped
        ));
    }

    // Baseline: the same users straight to a stub (mutual TLS, as the edge would be).
    let baseline = args.baseline.then(|| {
        let (stub, counts) = start_stub(&stub_rt, &pki, &stop);
        let to_stub = Target {
            addr: stub,
            tls: tls::client_config_trusting(pki.roots(), Some(pki.material(DevRole::Client)))
                .expect("client TLS"),
            name: ServerName::try_from(DIRECTOR_NAME).expect("name"),
        };
        let b = run_phase(&load_rt, &to_stub, &args, tck);
        failures.absorb(b.failures.clone(), "baseline: ");
        for f in check_stub(&counts, &b.sent) {
            failures.push(format!("baseline: {f}"));
        }
        b
    });

    report(&args, &with_edge, baseline.as_ref(), forwarded, &failures);

    stop.store(true, Ordering::Relaxed);
    edge_rt.block_on(edge.stop());
    drop(load_rt);
    drop(stub_rt);
    drop(edge_rt);
    if failures.count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
