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

/// The allocator the edge ships with (src/main.rs), so that the edge's CPU here is the
/// shipped binary's; `MALLOC_CONF` tunes it at run time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "../../tests/support/mod.rs"]
mod support;

#[path = "../common/proc.rs"]
mod proc_stats;

mod cpu;
mod report;
mod workload;

use cpu::*;
use report::*;
use workload::*;

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
    /// `[pool]` on this Redis (`redis://127.0.0.1:PORT/0`): the pool's exchange runs beside
    /// the load (what `benches/pool_soak.sh` uses, restarting Redis during the run).
    pool_redis: Option<String>,
    /// After the main phase: this many rounds of capture off / capture on (`[capture]` to a
    /// UDP collector in this process, switched by reload), the edge's CPU per message each.
    capture_ab: usize,
    /// The capture A/B over TCP to the collector instead of UDP.
    capture_tcp: bool,
}

const USAGE: &str = "usage: cargo bench --bench load -- [--users N (100)] [--seconds S (10)] \
                     [--dialogs-per-user K (10000)] [--rate R (0 = closed loop)] [--no-baseline] \
                     [--pool-redis redis://HOST:PORT/DB] [--capture-ab ROUNDS [--capture-tcp]]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        users: 100,
        seconds: 10.0,
        dialogs_per_user: 10_000,
        rate: 0.0,
        baseline: true,
        pool_redis: None,
        capture_ab: 0,
        capture_tcp: false,
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
            "--pool-redis" => args.pool_redis = Some(value("--pool-redis")?),
            "--capture-tcp" => args.capture_tcp = true,
            "--capture-ab" => {
                args.capture_ab = value("--capture-ab")?
                    .parse()
                    .map_err(|e| format!("--capture-ab: {e}"))?
            }
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

/// SIP capture's cost: rounds of the same load with capture off and on (HEP over UDP to a
/// collector socket here, drained by a thread of its own, not counted as the edge's),
/// alternating on one edge by reload; the edge's CPU per forwarded message each round,
/// their medians and ratio, and what the collector received.
fn capture_ab(
    args: &Args,
    edge: &sipedge::shell::RunningEdge,
    topo: &sipedge::topology::Topology,
    load_rt: &tokio::runtime::Runtime,
    to_edge: &Target,
    tck: f64,
    failures: &mut Failures,
) {
    // The collector: a socket in this process, on a thread of its own, counting HEP
    // messages (UDP: datagrams; TCP: by each message's length field).
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (at, drain) = if args.capture_tcp {
        let listener = std::net::TcpListener::bind("127.0.0.3:0").expect("collector socket");
        let at = listener.local_addr().expect("collector address");
        let (received, done) = (received.clone(), done.clone());
        let drain = std::thread::spawn(move || {
            use std::io::Read as _;
            listener.set_nonblocking(true).expect("nonblocking");
            let mut buf = vec![0u8; 256 * 1024];
            let mut pending: Vec<u8> = Vec::new();
            let mut conn: Option<std::net::TcpStream> = None;
            while !done.load(Ordering::Relaxed) {
                if let Ok((c, _)) = listener.accept() {
                    c.set_read_timeout(Some(Duration::from_millis(200))).ok();
                    conn = Some(c);
                    pending.clear();
                }
                let Some(c) = conn.as_mut() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let Ok(n) = c.read(&mut buf) else { continue };
                pending.extend_from_slice(buf.get(..n).unwrap_or_default());
                let mut at = 0;
                while pending.len() >= at + 6 {
                    let len = usize::from(u16::from_be_bytes([pending[at + 4], pending[at + 5]]));
                    if len < 6 || pending.len() < at + len {
                        break;
                    }
                    at += len;
                    received.fetch_add(1, Ordering::Relaxed);
                }
                pending.drain(..at);
            }
        });
        (at, drain)
    } else {
        let collector = std::net::UdpSocket::bind("127.0.0.3:0").expect("collector socket");
        collector
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("collector timeout");
        let at = collector.local_addr().expect("collector address");
        let (received, done) = (received.clone(), done.clone());
        let drain = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !done.load(Ordering::Relaxed) {
                if collector.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        (at, drain)
    };
    let mut on = topo.clone();
    on.capture = Some(sipedge::topology::CaptureConfig {
        collector: at,
        transport: if args.capture_tcp {
            sipedge::topology::CaptureTransport::Tcp
        } else {
            sipedge::topology::CaptureTransport::Udp
        },
        agent_id: 1,
        password: None,
        external: true,
        internal: true,
        bodies: true,
        max_queued_bytes: 16 * 1024 * 1024,
    });
    let (mut off_us, mut on_us) = (Vec::new(), Vec::new());
    let copies = &edge.shared.capture.counters;
    for round in 0..args.capture_ab {
        for capture in [false, true] {
            let reloaded = edge.reload(if capture { &on } else { topo });
            if let Err(e) = reloaded {
                failures.push(format!("capture A/B: reload: {e}"));
                return;
            }
            let before = edge_counters(&edge.shared);
            let phase = run_phase(load_rt, to_edge, args, tck);
            let forwarded = edge_counters(&edge.shared).forwarded - before.forwarded;
            failures.absorb(phase.failures.clone(), "capture A/B: ");
            let us = phase.cpu.edge * 1e6 / forwarded.max(1) as f64;
            println!(
                "capture A/B round {round} capture {}: {forwarded} messages forwarded, {:.2} edge CPU-s, {us:.2} µs CPU per message",
                if capture { "on " } else { "off" },
                phase.cpu.edge,
            );
            if capture { &mut on_us } else { &mut off_us }.push(us);
        }
    }
    let _ = edge.reload(topo);
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    let _ = drain.join();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (off, on) = (median(&mut off_us), median(&mut on_us));
    let queued = copies.queued.load(Ordering::Relaxed);
    let sent = copies.sent.load(Ordering::Relaxed);
    let dropped: u64 = copies.dropped().iter().map(|(_, n)| n).sum();
    println!(
        "capture A/B ({}): median {off:.2} µs CPU per message off, {on:.2} on: capture costs {:.2} µs per message forwarded ({:.2}x); {queued} copies queued, {sent} sent, {dropped} dropped, {} received by the collector",
        if args.capture_tcp { "tcp" } else { "udp" },
        on - off,
        on / off.max(f64::MIN_POSITIVE),
        received.load(Ordering::Relaxed)
    );
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
    // With Redis: the pool's exchange runs beside the load (bans, rate reports, holdings).
    topo.pool = args
        .pool_redis
        .as_ref()
        .map(|url| sipedge::topology::PoolConfig {
            redis: url.clone(),
            key_prefix: "sipedge-load".into(),
            username: None,
            password: None,
            timeout: Duration::from_millis(500),
        });
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
    if let Some(pool) = &edge.view.pool {
        use std::sync::atomic::Ordering::Relaxed;
        println!(
            "pool: Redis {} at the end; {} outage(s); bans published {}, received {}; \
             requests charged from other members {}",
            pool.status().label(),
            pool.outages.load(Relaxed),
            pool.bans_published.load(Relaxed),
            pool.bans_received.load(Relaxed),
            pool.requests_charged.load(Relaxed),
        );
    }
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
    if args.capture_ab > 0 {
        capture_ab(&args, &edge, &topo, &load_rt, &to_edge, tck, &mut failures);
    }

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
