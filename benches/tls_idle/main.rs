//! Many idle TLS remote users on one edge (issue 18): what each costs the edge in memory,
//! what a handshake costs it in CPU, and whether every client stays connected.
//!
//! The edge runs as a process of its own (`sipedge run --topology FILE`), so that its memory
//! (PSS and RSS from `/proc/<pid>/smaps_rollup`) is its own; the Director stub runs in this
//! process; the clients run in worker processes (this binary again, `--client-worker`), each
//! below the open-file limit, from loopback source addresses of their own. The bench ramps
//! to each count of `--counts`, lets the edge settle and samples it, holds the last count
//! for `--hold` seconds of CRLF keep-alives, checks every client, closes everything and
//! samples again; then measures the edge's CPU per TLS handshake with 1, 4 and 64 clients in
//! parallel, full and resumed. See benches/README.md.
//!
//! Run: `cargo bench --bench tls_idle -- [--counts 1000,5000,10000,18000] [--hold 30]
//! [--handshakes 2000] [--parallel 1,4,64] ...`. Exit status 0, 1 on any failure, 2 for bad
//! arguments.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    unreachable_pub
)]

#[path = "../../tests/support/mod.rs"]
mod support;

#[path = "../common/children.rs"]
mod children;
#[path = "../common/proc.rs"]
mod proc_stats;

mod edge;
mod worker;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use edge::{Edge, Mem};

const USAGE: &str = "usage: cargo bench --bench tls_idle -- [--counts 1000,5000,10000,18000] \
    [--hold S (30)] [--ping S (30)] [--settle S (3)] [--workers N (one per 5000 clients)] \
    [--ramp-concurrency N (8 per worker)] [--max-failures N (20)] [--timeout S (10)] \
    [--handshakes N (2000; 0 skips)] [--parallel 1,4,64] [--modes full,resumed] [--tls 1.3] [--hs-rounds N (1)] \
    [--shared-sources] [--edge-nofile N] [--sipedge PATH] [--edge-env KEY=VALUE]... [--reopen N (0)] [--late-sample S (0)] [--key ecdsa|rsa] [--keep]";

/// A worker command without an answer within this is a failure of the bench.
const COMMAND_WAIT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    V13,
    V12,
}

impl TlsVersion {
    fn label(self) -> &'static str {
        match self {
            TlsVersion::V13 => "1.3",
            TlsVersion::V12 => "1.2",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments

struct Args {
    counts: Vec<usize>,
    hold: Duration,
    ping: Duration,
    settle: Duration,
    workers: Option<usize>,
    ramp_concurrency: usize,
    max_failures: usize,
    timeout: Duration,
    handshakes: usize,
    /// Each handshake run this many times in a row (medians printed beside the rounds).
    hs_rounds: usize,
    parallel: Vec<usize>,
    modes: Vec<bool>,
    tls: Vec<TlsVersion>,
    shared_sources: bool,
    edge_nofile: Option<u64>,
    sipedge: Option<PathBuf>,
    /// `KEY=VALUE` for the edge's environment (allocator tunables, say).
    edge_env: Vec<(String, String)>,
    /// Cycles of reconnecting the same clients after the close, and closing again.
    reopen: usize,
    /// A last sample this long after everything closed (past the firewall's 120 s memory
    /// of idle sources and its 10 s sweep, the edge should be back to its size).
    late_sample: Duration,
    /// The edge's external certificate key: ECDSA P-256 (the dev PKI's) or RSA 2048.
    rsa: bool,
    keep: bool,
}

fn list<T: std::str::FromStr>(name: &str, v: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let s = s.trim().replace('_', "");
            let (num, mul) = match s.strip_suffix(['k', 'K']) {
                Some(n) => (n.to_string(), "000"),
                None => (s.clone(), ""),
            };
            format!("{num}{mul}")
                .parse()
                .map_err(|_| format!("{name}: {s:?} is not a number"))
        })
        .collect()
}

fn seconds(name: &str, v: &str) -> Result<Duration, String> {
    let s: f64 = v
        .parse()
        .map_err(|_| format!("{name}: {v:?} is not a number"))?;
    if !(0.0..=86_400.0).contains(&s) {
        return Err(format!("{name}: between 0 and 86400"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        counts: vec![1000, 5000, 10_000, 18_000],
        hold: Duration::from_secs(30),
        ping: Duration::from_secs(30),
        settle: Duration::from_secs(3),
        workers: None,
        ramp_concurrency: 8,
        max_failures: 20,
        timeout: Duration::from_secs(10),
        handshakes: 2000,
        hs_rounds: 1,
        parallel: vec![1, 4, 64],
        modes: vec![false, true],
        tls: vec![TlsVersion::V13],
        shared_sources: false,
        edge_nofile: None,
        sipedge: None,
        edge_env: Vec::new(),
        reopen: 0,
        late_sample: Duration::ZERO,
        rsa: false,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--counts" => a.counts = list("--counts", &value()?)?,
            "--hold" => a.hold = seconds("--hold", &value()?)?,
            "--ping" => a.ping = seconds("--ping", &value()?)?,
            "--settle" => a.settle = seconds("--settle", &value()?)?,
            "--timeout" => a.timeout = seconds("--timeout", &value()?)?,
            "--workers" => {
                a.workers = Some(value()?.parse().map_err(|e| format!("--workers: {e}"))?)
            }
            "--ramp-concurrency" => {
                a.ramp_concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--ramp-concurrency: {e}"))?
            }
            "--max-failures" => {
                a.max_failures = value()?
                    .parse()
                    .map_err(|e| format!("--max-failures: {e}"))?
            }
            "--handshakes" => {
                a.handshakes = *list::<usize>("--handshakes", &value()?)?
                    .first()
                    .ok_or("--handshakes needs a number")?
            }
            "--parallel" => a.parallel = list("--parallel", &value()?)?,
            "--hs-rounds" => {
                a.hs_rounds = *list::<usize>("--hs-rounds", &value()?)?
                    .first()
                    .filter(|&&n| (1..=20).contains(&n))
                    .ok_or("--hs-rounds: 1 to 20")?
            }
            "--modes" => {
                a.modes = value()?
                    .split(',')
                    .map(|m| match m.trim() {
                        "full" => Ok(false),
                        "resumed" => Ok(true),
                        other => Err(format!("--modes: {other:?} (full or resumed)")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--tls" => {
                a.tls = value()?
                    .split(',')
                    .map(|m| match m.trim() {
                        "1.3" => Ok(TlsVersion::V13),
                        "1.2" => Ok(TlsVersion::V12),
                        other => Err(format!("--tls: {other:?} (1.3 or 1.2)")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--shared-sources" => a.shared_sources = true,
            "--edge-nofile" => {
                a.edge_nofile = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--edge-nofile: {e}"))?,
                )
            }
            "--sipedge" => a.sipedge = Some(PathBuf::from(value()?)),
            "--keep" => a.keep = true,
            "--reopen" => a.reopen = value()?.parse().map_err(|e| format!("--reopen: {e}"))?,
            "--key" => {
                a.rsa = match value()?.as_str() {
                    "ecdsa" => false,
                    "rsa" => true,
                    other => return Err(format!("--key: {other:?} (ecdsa or rsa)")),
                }
            }
            "--late-sample" => {
                a.late_sample = Duration::from_secs(
                    value()?
                        .parse()
                        .map_err(|e| format!("--late-sample: {e}"))?,
                )
            }
            "--edge-env" => {
                let v = value()?;
                let (k, v) = v.split_once('=').ok_or("--edge-env needs KEY=VALUE")?;
                a.edge_env.push((k.to_string(), v.to_string()));
            }
            // cargo passes --bench to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    a.counts.retain(|&c| c > 0);
    a.counts.sort_unstable();
    a.counts.dedup();
    if a.counts.last().is_some_and(|&c| c > 1_000_000) {
        return Err("--counts: at most 1 000 000".into());
    }
    if a.ping.is_zero() || a.timeout.is_zero() {
        return Err("--ping and --timeout must be > 0".into());
    }
    if a.parallel.iter().any(|&p| p == 0 || p > 1024) || a.ramp_concurrency == 0 {
        return Err("--parallel in 1..=1024, --ramp-concurrency > 0".into());
    }
    if a.max_failures == 0 {
        return Err("--max-failures must be > 0".into());
    }
    if a.workers.is_some_and(|w| w == 0 || w > 20) {
        return Err("--workers in 1..=20".into());
    }
    if a.handshakes > 60_000 {
        return Err("--handshakes: at most 60 000".into());
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// /proc

pub use crate::proc_stats::{clock_ticks_per_second, cpu_ticks};

use crate::proc_stats::sipedge_commit;

// ---------------------------------------------------------------------------------------------
// Workers

/// The worker processes: commands to their stdin, answers (one line each) from a reader
/// thread per worker. Killed by their PIDs when dropped (they also exit on their own when
/// their stdin closes).
struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    answers: mpsc::Receiver<(usize, String)>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            children::kill(c);
        }
    }
}

type Answer = HashMap<String, String>;

/// `key=value` words; `err=` takes the rest of the line.
fn parse_answer(line: &str) -> Answer {
    let mut out = HashMap::new();
    let (head, err) = match line.find(" err=") {
        Some(at) => (&line[..at], Some(&line[at + 5..])),
        None => (line, None),
    };
    let mut words = head.split_whitespace();
    if let Some(kind) = words.next() {
        out.insert("kind".to_string(), kind.to_string());
    }
    for w in words {
        if let Some((k, v)) = w.split_once('=') {
            out.insert(k.to_string(), v.to_string());
        }
    }
    if let Some(e) = err {
        out.insert("err".to_string(), e.to_string());
    }
    out
}

fn num(a: &Answer, key: &str) -> u64 {
    a.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl Workers {
    fn start(n: usize, edge: &Edge, ca: &std::path::Path, args: &Args) -> Result<Workers, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let (tx, answers) = mpsc::channel();
        let mut w = Workers {
            children: Vec::new(),
            stdins: Vec::new(),
            answers,
        };
        for id in 0..n {
            let mut cmd = Command::new(&exe);
            cmd.arg("--client-worker")
                .args(["--id", &id.to_string()])
                .args(["--edge", &edge.ext.to_string()])
                .arg("--ca")
                .arg(ca)
                .args(["--ping-ms", &args.ping.as_millis().to_string()])
                .args(["--concurrency", &args.ramp_concurrency.to_string()])
                .args(["--timeout-ms", &args.timeout.as_millis().to_string()])
                .args(["--max-failures", &args.max_failures.to_string()]);
            if args.shared_sources {
                cmd.arg("--shared-source");
            }
            let mut child = children::spawn(
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit()),
            )
            .map_err(|e| format!("start worker {id}: {e}"))?;
            let stdin = child.stdin.take().ok_or("worker stdin")?;
            let stdout = child.stdout.take().ok_or("worker stdout")?;
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if tx.send((id, line)).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send((id, "EOF".into()));
                })
                .map_err(|e| format!("reader thread: {e}"))?;
            w.children.push(child);
            w.stdins.push(stdin);
        }
        Ok(w)
    }

    fn len(&self) -> usize {
        self.children.len()
    }

    fn send(&mut self, id: usize, command: &str) -> Result<(), String> {
        let stdin = self.stdins.get_mut(id).ok_or("no such worker")?;
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("worker {id}: {e}"))
    }

    /// One answer from worker `id` (the only one asked).
    fn answer(&mut self, id: usize, wait: Duration) -> Result<Answer, String> {
        let (from, line) = self
            .answers
            .recv_timeout(wait)
            .map_err(|_| format!("worker {id} did not answer within {wait:?}"))?;
        if line == "EOF" {
            return Err(format!("worker {from} exited"));
        }
        if from != id {
            return Err(format!("worker {from} answered out of turn: {line}"));
        }
        if line.starts_with("error") {
            return Err(format!("worker {id}: {line}"));
        }
        Ok(parse_answer(&line))
    }

    /// Sends each worker its command (`None`: none), then collects every answer.
    fn ask_all(
        &mut self,
        command: impl Fn(usize) -> Option<String>,
    ) -> Result<Vec<Answer>, String> {
        let mut asked = Vec::new();
        for id in 0..self.len() {
            if let Some(c) = command(id) {
                self.send(id, &c)?;
                asked.push(id);
            }
        }
        let deadline = Instant::now() + COMMAND_WAIT;
        let mut out: Vec<Option<Answer>> = vec![None; self.len()];
        for _ in 0..asked.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let (from, line) = self
                .answers
                .recv_timeout(left)
                .map_err(|_| format!("workers did not answer within {COMMAND_WAIT:?}"))?;
            if line == "EOF" {
                return Err(format!("worker {from} exited"));
            }
            if line.starts_with("error") {
                return Err(format!("worker {from}: {line}"));
            }
            if let Some(slot) = out.get_mut(from) {
                *slot = Some(parse_answer(&line));
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The workers' resident memory, KiB.
    fn rss_kib(&self) -> u64 {
        self.children
            .iter()
            .filter_map(|c| edge::vm_rss(c.id()))
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Samples

/// The edge and the kernel at one point.
#[derive(Clone, Debug)]
struct Sample {
    label: String,
    /// Connections the clients hold (0 at idle and after close).
    conns: u64,
    /// The edge's own count of external connections (`None`: its operations listener did
    /// not answer).
    edge_conns: Option<u64>,
    tracked_sources: Option<u64>,
    mem: Mem,
    fds: u64,
    tcp_inuse: u64,
    tcp_mem_pages: u64,
    slabs_kib: Option<u64>,
    clients_rss_kib: u64,
}

fn sample(label: &str, edge: &Edge, workers: &Workers, conns: u64) -> Result<Sample, String> {
    let metrics = edge.metrics().ok();
    let (tcp_inuse, tcp_mem_pages) = edge::sockstat().unwrap_or((0, 0));
    Ok(Sample {
        label: label.to_string(),
        conns,
        edge_conns: metrics.map(|m| m.external),
        tracked_sources: metrics.map(|m| m.tracked_sources),
        mem: edge::mem(edge.pid).ok_or("cannot read the edge's smaps_rollup")?,
        fds: edge::fd_count(edge.pid).unwrap_or(0),
        tcp_inuse,
        tcp_mem_pages,
        slabs_kib: edge::socket_slabs_kib(),
        clients_rss_kib: workers.rss_kib(),
    })
}

/// What one ramp step cost.
#[derive(Clone, Debug, Default)]
struct Ramp {
    target: usize,
    opened: u64,
    failed: u64,
    resumed: u64,
    wall_s: f64,
    edge_cpu_s: f64,
    client_cpu_s: f64,
    first_error: Option<String>,
}

/// One handshake-phase run.
#[derive(Clone, Debug)]
struct HsRun {
    tls: TlsVersion,
    resumed_mode: bool,
    parallel: usize,
    done: u64,
    resumed: u64,
    failed: u64,
    wall_s: f64,
    edge_cpu_s: f64,
    client_cpu_s: f64,
    first_error: Option<String>,
}

fn kib_per(delta_kib: i64, n: u64) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{:.2}", delta_kib as f64 / n as f64)
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Every worker closes its connections; the edge must count none within 30 s.
fn close_all(edge: &Edge, workers: &mut Workers, failures: &mut Vec<String>) -> Result<(), String> {
    let t0 = Instant::now();
    let closed = workers.ask_all(|_| Some("close".into()))?;
    let clients_s = t0.elapsed().as_secs_f64();
    let left: u64 = closed.iter().map(|a| num(a, "held")).sum();
    if left > 0 {
        failures.push(format!("{left} connections still held after close"));
    }
    let edge_left = edge.wait_external(0, Duration::from_secs(30));
    println!(
        "  close: the clients closed in {clients_s:.1} s; the edge counted {} external connections {:.1} s after the close began",
        opt(edge_left),
        t0.elapsed().as_secs_f64()
    );
    if edge_left != Some(0) {
        failures.push(format!(
            "the edge still counts {} external connections after close",
            opt(edge_left)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Main

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--client-worker") {
        return worker::main(&argv[2..]);
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tls_idle: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The whole run; `Ok(false)` when something failed (reported).
fn run(args: &Args) -> Result<bool, String> {
    let tck = clock_ticks_per_second();
    let max = args.counts.last().copied().unwrap_or(0);
    let workers_n = args.workers.unwrap_or(max.div_ceil(5000).clamp(1, 20));
    let share = max.div_ceil(workers_n);
    let (_, own_hard) = edge::nofile(std::process::id()).unwrap_or((1024, 1024));
    if share as u64 + 64 > own_hard {
        return Err(format!(
            "{share} connections per worker do not fit under the open-file limit ({own_hard}): more --workers"
        ));
    }
    if args.shared_sources && share > 25_000 {
        return Err(format!(
            "--shared-sources: {share} connections from one address per worker would run out of \
             ephemeral ports (~28 000): more --workers"
        ));
    }

    // The stub runtime: the Director, and the signal watcher.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("stub")
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut int, mut term) = rt
            .block_on(async {
                Ok::<_, std::io::Error>((
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::terminate())?,
                ))
            })
            .map_err(|e| format!("signal handlers: {e}"))?;
        rt.spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            edge::kill_running();
            eprintln!("interrupted: the edge and the workers killed");
            std::process::exit(130);
        });
    }
    let pki = support::Pki::new();
    let director = rt.block_on(support::Director::start_at(
        &pki,
        "127.0.0.3:0".parse().expect("address"),
    ));
    let director = director.answering_ok();
    let director_addr = director.addr;
    let options_seen = Arc::new(AtomicU64::new(0));
    {
        let seen = options_seen.clone();
        let mut director = director;
        rt.spawn(async move {
            while let Some(r) = director.try_recv(Duration::from_secs(86_400)).await {
                if r.text.starts_with("OPTIONS ") {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    let dir = tempfile::Builder::new()
        .prefix("tls-idle")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let sipedge = args
        .sipedge
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sipedge")));
    // With --key rsa the external certificate is RSA 2048, from a CA of its own that the
    // clients trust instead of the dev CA.
    let external = if args.rsa {
        Some(edge::rsa_external(dir.path())?)
    } else {
        None
    };
    let (edge, topology) = Edge::start(
        &sipedge,
        dir.path(),
        &pki,
        external.as_ref(),
        director_addr,
        args.shared_sources,
        &args.edge_env,
    )?;
    let (soft, hard) = edge.set_nofile(args.edge_nofile)?;

    println!(
        "tls_idle: sipedge {} (pid {}), external {}, Director stub {director_addr}; edge RLIMIT_NOFILE {soft} (hard {hard}); \
         {workers_n} client workers, up to {share} connections each, {}; keep-alive every {:?}; {} CPU(s)",
        sipedge_commit(),
        edge.pid,
        edge.ext,
        if args.shared_sources {
            "one source address per worker (firewall: allow_sources 127.0.0.0/8)".to_string()
        } else {
            "each connection from a source address of its own (firewall at its defaults)".to_string()
        },
        args.ping,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let client_ca = external.as_ref().map_or(&pki.pki.ca_cert, |x| &x.ca);
    let mut workers = Workers::start(workers_n, &edge, client_ca, args)?;
    let mut failures: Vec<String> = Vec::new();

    // Idle baseline: the edge up, its Director connected, no client.
    let cpu_idle0 = cpu_ticks(&edge.pid.to_string()).unwrap_or(0);
    let t_idle = Instant::now();
    std::thread::sleep(args.settle);
    let idle_cpu_per_s = cpu_ticks(&edge.pid.to_string())
        .unwrap_or(0)
        .saturating_sub(cpu_idle0) as f64
        / tck
        / t_idle.elapsed().as_secs_f64();
    let baseline = sample("idle", &edge, &workers, 0)?;
    let mut samples = vec![baseline.clone()];
    let mut ramps: Vec<Ramp> = Vec::new();
    let mut stopped: Option<String> = None;
    let mut held: u64 = 0;

    // Ramp.
    for &count in &args.counts {
        let before = edge.metrics().unwrap_or_default();
        let cpu0 = cpu_ticks(&edge.pid.to_string()).unwrap_or(0);
        let t0 = Instant::now();
        let n = workers.len();
        let answers = workers.ask_all(|id| {
            let target = count / n + usize::from(id < count % n);
            Some(format!("open {target}"))
        })?;
        let wall_s = t0.elapsed().as_secs_f64();
        let edge_cpu_s = cpu_ticks(&edge.pid.to_string())
            .unwrap_or(0)
            .saturating_sub(cpu0) as f64
            / tck;
        let ramp = Ramp {
            target: count,
            opened: answers.iter().map(|a| num(a, "opened")).sum(),
            failed: answers.iter().map(|a| num(a, "failed")).sum(),
            resumed: answers.iter().map(|a| num(a, "resumed")).sum(),
            wall_s,
            edge_cpu_s,
            client_cpu_s: answers.iter().map(|a| num(a, "cpu")).sum::<u64>() as f64 / tck,
            first_error: answers
                .iter()
                .filter_map(|a| a.get("err"))
                .find(|e| e.as_str() != "-")
                .cloned(),
        };
        held = answers.iter().map(|a| num(a, "held")).sum();
        let _ = edge.wait_external(held, Duration::from_secs(10));
        std::thread::sleep(args.settle);
        let s = sample(&count.to_string(), &edge, &workers, held)?;
        println!(
            "  {count:>7}: held {held}, opened {} in {:.1} s, failed {}; edge PSS {} MiB, fds {}",
            ramp.opened,
            wall_s,
            ramp.failed,
            mib(s.mem.pss),
            s.fds
        );
        samples.push(s.clone());
        if ramp.failed > 0 || held < count as u64 {
            let after = edge.metrics();
            let (accept_lines, first_line) = edge.accept_failures();
            let mut why = format!(
                "stopped at {held} of {count}: {} connections failed (first: {})",
                ramp.failed,
                ramp.first_error.as_deref().unwrap_or("?")
            );
            if accept_lines > 0 || s.fds + 16 >= soft {
                let _ = write!(
                    why,
                    "; the edge's descriptor limit: {} fds of RLIMIT_NOFILE {soft}, {accept_lines} \
                     \"accept failing\" lines in its log (first: {})",
                    s.fds,
                    first_line.as_deref().unwrap_or("-")
                );
            }
            match after {
                Ok(after) => {
                    if after.refused > before.refused {
                        let _ = write!(
                            why,
                            "; the edge refused {} at accept (max_connections or max_handshakes)",
                            after.refused - before.refused
                        );
                    }
                    if after.handshakes_failed > before.handshakes_failed {
                        let _ = write!(
                            why,
                            "; {} TLS handshakes failed at the edge",
                            after.handshakes_failed - before.handshakes_failed
                        );
                    }
                }
                Err(e) => {
                    let _ = write!(why, "; the edge's operations listener did not answer ({e})");
                }
            }
            failures.push(why.clone());
            stopped = Some(why);
            ramps.push(ramp);
            break;
        }
        ramps.push(ramp);
    }

    // Hold with keep-alives, then check every client.
    let mut hold_report = String::new();
    // New remote users served while the others are held: one every 10 s.
    let (mut probes, mut probes_ok, mut probe_ms) = (0u64, 0u64, Vec::new());
    if held > 0 {
        let t0 = Instant::now();
        while t0.elapsed() < args.hold {
            let left = args.hold.saturating_sub(t0.elapsed());
            std::thread::sleep(left.min(Duration::from_secs(10)));
            if !edge.alive() {
                return Err(format!("the edge died:\n{}", edge.log_tail(20)));
            }
            let answer = workers.ask_all(|id| (id == 0).then(|| "probe".to_string()))?;
            probes += 1;
            if let Some(a) = answer.first().filter(|a| num(a, "ok") == 1) {
                probes_ok += 1;
                probe_ms.push(num(a, "ms"));
            }
            println!(
                "  hold {:>4.0}/{} s: the edge counts {} external connections",
                t0.elapsed().as_secs_f64(),
                args.hold.as_secs(),
                edge.metrics()
                    .map_or_else(|e| format!("? ({e})"), |m| m.external.to_string())
            );
        }
        let checks = workers.ask_all(|_| Some("check".into()))?;
        let sum = |k: &str| checks.iter().map(|a| num(a, k)).sum::<u64>();
        let (now_held, closed, pings, pongs, late, unexpected) = (
            sum("held"),
            sum("closed"),
            sum("pings"),
            sum("pongs"),
            sum("late"),
            sum("unexpected"),
        );
        let edge_count = edge
            .metrics()
            .map_or_else(|_| "?".to_string(), |m| m.external.to_string());
        let opened: u64 = ramps.iter().map(|r| r.opened).sum();
        let options = options_seen.load(Ordering::Relaxed);
        // The clients' own account: every one still held, none closed, every ping answered.
        let all_ok =
            now_held == held && closed == 0 && late == 0 && unexpected == 0 && probes_ok == probes;
        probe_ms.sort_unstable();
        let probe_median = probe_ms.get(probe_ms.len() / 2).copied().unwrap_or(0);
        hold_report = format!(
            "After {} s at {held}: every client still connected: {}. Held {now_held} of {held}, \
             closed by the edge {closed}; keep-alives {pings} sent, {pongs} answered, {late} \
             unanswered within 10 s; {unexpected} unexpected bytes; the edge counts {edge_count} \
             external connections; the Director stub answered {options} OPTIONS (clients \
             opened {opened}); new users meanwhile: {probes_ok} of {probes} served (handshake \
             and OPTIONS answered, median {probe_median} ms).",
            args.hold.as_secs(),
            if all_ok { "yes" } else { "NO" }
        );
        if !all_ok {
            failures.push(hold_report.clone());
        }
        if edge_count != "?" && edge_count != held.to_string() {
            failures.push(format!(
                "the edge counts {edge_count} external connections, the clients hold {held}"
            ));
        }
        if options != opened + probes_ok {
            failures.push(format!(
                "the Director stub answered {options} OPTIONS, the clients opened {opened} connections and {probes_ok} new users"
            ));
        }
        if pings == 0 {
            hold_report.push_str(" (No keep-alive was due yet: --hold shorter than --ping.)");
        }
        println!("  {hold_report}");
    }
    let peak = samples.last().cloned().unwrap_or_else(|| baseline.clone());

    // Close everything; memory after. With --reopen, the same clients again, and close.
    if held > 0 {
        close_all(&edge, &mut workers, &mut failures)?;
        std::thread::sleep(args.settle);
        samples.push(sample(
            &format!("closed +{}s", args.settle.as_secs()),
            &edge,
            &workers,
            0,
        )?);
        std::thread::sleep(Duration::from_secs(10));
        samples.push(sample(
            &format!("closed +{}s", args.settle.as_secs() + 10),
            &edge,
            &workers,
            0,
        )?);
        for cycle in 1..=args.reopen {
            let n = workers.len();
            let target = held as usize;
            let t0 = Instant::now();
            let answers = workers.ask_all(|id| {
                let share = target / n + usize::from(id < target % n);
                Some(format!("open {share}"))
            })?;
            let again: u64 = answers.iter().map(|a| num(a, "held")).sum();
            let failed: u64 = answers.iter().map(|a| num(a, "failed")).sum();
            println!(
                "  reopen #{cycle}: {again} of {held} connected again in {:.1} s, {failed} failed",
                t0.elapsed().as_secs_f64()
            );
            if again < held {
                failures.push(format!("reopen: only {again} of {held} connected again"));
            }
            let _ = edge.wait_external(again, Duration::from_secs(10));
            std::thread::sleep(args.settle);
            samples.push(sample(
                &format!("reopened #{cycle}"),
                &edge,
                &workers,
                again,
            )?);
            close_all(&edge, &mut workers, &mut failures)?;
            std::thread::sleep(args.settle);
            samples.push(sample(
                &format!("closed #{cycle} +{}s", args.settle.as_secs()),
                &edge,
                &workers,
                0,
            )?);
        }
        let waited = args.settle + Duration::from_secs(10);
        if args.late_sample > waited {
            std::thread::sleep(args.late_sample - waited);
            samples.push(sample(
                &format!("closed +{}s", args.late_sample.as_secs()),
                &edge,
                &workers,
                0,
            )?);
        }
    }

    // Handshakes.
    let mut hs_runs: Vec<HsRun> = Vec::new();
    if args.handshakes > 0 {
        for &tls in &args.tls {
            for &resumed_mode in &args.modes {
                for p in args
                    .parallel
                    .iter()
                    .flat_map(|&p| std::iter::repeat_n(p, args.hs_rounds))
                {
                    let command = format!(
                        "hs n={} p={p} mode={} tls={}",
                        args.handshakes,
                        if resumed_mode { "resumed" } else { "full" },
                        tls.label()
                    );
                    workers.send(0, &command)?;
                    let primed = workers.answer(0, COMMAND_WAIT)?;
                    if primed.get("kind").map(String::as_str) != Some("primed") {
                        return Err(format!("worker 0: expected primed, got {primed:?}"));
                    }
                    let cpu0 = cpu_ticks(&edge.pid.to_string()).unwrap_or(0);
                    let t0 = Instant::now();
                    workers.send(0, "go")?;
                    let a = workers.answer(0, COMMAND_WAIT)?;
                    let wall_s = t0.elapsed().as_secs_f64();
                    let edge_cpu_s = cpu_ticks(&edge.pid.to_string())
                        .unwrap_or(0)
                        .saturating_sub(cpu0) as f64
                        / tck;
                    let run = HsRun {
                        tls,
                        resumed_mode,
                        parallel: p,
                        done: num(&a, "done"),
                        resumed: num(&a, "resumed"),
                        failed: num(&a, "failed") + num(&primed, "failed"),
                        wall_s,
                        edge_cpu_s,
                        client_cpu_s: num(&a, "cpu") as f64 / tck,
                        first_error: a
                            .get("err")
                            .or(primed.get("err"))
                            .filter(|e| e.as_str() != "-")
                            .cloned(),
                    };
                    println!(
                        "  handshakes TLS {} {} ×{p}: {} in {:.1} s ({} resumed, {} failed), edge CPU {:.2} s",
                        tls.label(),
                        if resumed_mode { "resumed" } else { "full" },
                        run.done,
                        wall_s,
                        run.resumed,
                        run.failed,
                        edge_cpu_s
                    );
                    if run.failed > 0 {
                        failures.push(format!(
                            "handshakes TLS {} {} ×{p}: {} failed (first: {})",
                            tls.label(),
                            if resumed_mode { "resumed" } else { "full" },
                            run.failed,
                            run.first_error.as_deref().unwrap_or("?")
                        ));
                    }
                    if resumed_mode && run.resumed < run.done {
                        failures.push(format!(
                            "handshakes TLS {} resumed ×{p}: only {} of {} resumed",
                            tls.label(),
                            run.resumed,
                            run.done
                        ));
                    }
                    hs_runs.push(run);
                }
            }
        }
    }
    let (accept_lines, first_accept) = edge.accept_failures();
    let final_metrics = edge.metrics().unwrap_or_default();
    drop(workers);

    // Report.
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Edge memory (sipedge pid {}, /proc/<pid>/smaps_rollup)\n",
        edge.pid
    );
    let _ = writeln!(
        out,
        "| point | conns | edge conns | PSS MiB | ΔPSS KiB/conn | marginal PSS KiB/conn | RSS MiB | ΔRSS KiB/conn | Δanon KiB/conn | edge fds | sources | TCP sockets | TCP mem KiB (Δ) | socket slabs ΔKiB/conn | clients RSS KiB/conn |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut prev: Option<&Sample> = None;
    for s in &samples {
        let d = |now: u64, base: u64| now as i64 - base as i64;
        let per = |now: u64, base: u64| {
            if s.conns == 0 {
                format!("Δ {:+}", d(now, base))
            } else {
                kib_per(d(now, base), s.conns)
            }
        };
        let marginal = match prev {
            Some(p) if s.conns > p.conns => kib_per(d(s.mem.pss, p.mem.pss), s.conns - p.conns),
            _ => "-".into(),
        };
        let slabs = match (s.slabs_kib, baseline.slabs_kib) {
            (Some(now), Some(base)) => per(now, base),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({:+}) | {} | {} |",
            s.label,
            s.conns,
            opt(s.edge_conns),
            mib(s.mem.pss),
            per(s.mem.pss, baseline.mem.pss),
            marginal,
            mib(s.mem.rss),
            per(s.mem.rss, baseline.mem.rss),
            per(s.mem.anon, baseline.mem.anon),
            s.fds,
            opt(s.tracked_sources),
            s.tcp_inuse,
            s.tcp_mem_pages * 4,
            (s.tcp_mem_pages as i64 - baseline.tcp_mem_pages as i64) * 4,
            slabs,
            if s.conns == 0 {
                "-".into()
            } else {
                kib_per(s.clients_rss_kib as i64, s.conns)
            },
        );
        if s.conns > 0 {
            prev = Some(s);
        }
    }
    let after = samples.iter().rfind(|s| s.label.starts_with("closed +"));
    if let Some(a) = after {
        let grown = peak.mem.pss.saturating_sub(baseline.mem.pss);
        let kept = a.mem.pss as i64 - baseline.mem.pss as i64;
        let _ = writeln!(
            out,
            "\nAfter close the edge's PSS is {} MiB: {:+} KiB against idle, {:.0} % of the {} KiB it grew by at {} connections.",
            mib(a.mem.pss),
            kept,
            if grown > 0 { kept as f64 * 100.0 / grown as f64 } else { 0.0 },
            grown,
            peak.conns
        );
    }

    let _ = writeln!(out, "\n## Ramp (full TLS 1.3 handshakes, no resumption; each connection then one OPTIONS through the edge)\n");
    let _ = writeln!(out, "| to | opened | failed | resumed | wall s | conns/s | edge CPU s | edge CPU ms/conn | clients CPU ms/conn |");
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &ramps {
        let per = |s: f64| ms_per(s, r.opened);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {:.0} | {:.2} | {} | {} |",
            r.target,
            r.opened,
            r.failed,
            r.resumed,
            r.wall_s,
            r.opened as f64 / r.wall_s.max(1e-9),
            r.edge_cpu_s,
            per(r.edge_cpu_s),
            per(r.client_cpu_s),
        );
    }
    let _ = writeln!(
        out,
        "\nEdge CPU at idle before the ramp: {:.2} ms per second.",
        idle_cpu_per_s * 1000.0
    );
    if let Some(why) = &stopped {
        let _ = writeln!(out, "Ramp {why}");
    }
    if !hold_report.is_empty() {
        let _ = writeln!(out, "{hold_report}");
    }

    if !hs_runs.is_empty() {
        let _ = writeln!(
            out,
            "\n## Handshakes ({} per run, each connection closed once its handshake is done; client worker 0, one thread)\n",
            args.handshakes
        );
        let _ = writeln!(out, "| TLS | mode | parallel | done | resumed | failed | wall s | handshakes/s | edge CPU s | edge CPU ms/handshake | client CPU ms/handshake |");
        let _ = writeln!(
            out,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &hs_runs {
            let per = |s: f64| ms_per(s, r.done);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {} | {} |",
                r.tls.label(),
                if r.resumed_mode { "resumed" } else { "full" },
                r.parallel,
                r.done,
                r.resumed,
                r.failed,
                r.wall_s,
                r.done as f64 / r.wall_s.max(1e-9),
                r.edge_cpu_s,
                per(r.edge_cpu_s),
                per(r.client_cpu_s),
            );
        }
        if args.hs_rounds > 1 {
            let _ = write!(out, "\n{}", handshake_medians(&hs_runs));
        }
    }
    let _ = writeln!(
        out,
        "\nEdge counters at the end: {} connections accepted, {} refused at accept, {} handshakes failed; \
         {accept_lines} \"accept failing\" lines in its log{}.",
        final_metrics.accepted,
        final_metrics.refused,
        final_metrics.handshakes_failed,
        first_accept
            .map(|l| format!(" (first: {l})"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "CPU figures are /proc clock ticks ({tck}/s: 10 ms each); kernel figures (TCP sockets, TCP mem, socket slabs) are the whole box's, both ends of every loopback connection, and include other processes'.");
    let _ = writeln!(out, "Edge: {}", edge.command);
    let _ = writeln!(out, "\nTopology:\n```toml\n{}```", topology);
    if !failures.is_empty() {
        let _ = writeln!(out, "\nFAILURES ({}):", failures.len());
        for f in &failures {
            let _ = writeln!(out, "- {f}");
        }
        let _ = writeln!(out, "\nEdge log (last lines):\n{}", edge.log_tail(15));
    }
    println!("{out}");

    // One JSON line with the same numbers.
    let json = serde_json::json!({
        "commit": sipedge_commit(),
        "samples": samples.iter().map(|s| serde_json::json!({
            "point": s.label, "conns": s.conns, "edge_conns": s.edge_conns,
            "pss_kib": s.mem.pss, "rss_kib": s.mem.rss, "anon_kib": s.mem.anon, "fds": s.fds,
            "tracked_sources": s.tracked_sources,
            "tcp_inuse": s.tcp_inuse, "tcp_mem_pages": s.tcp_mem_pages, "socket_slabs_kib": s.slabs_kib,
            "clients_rss_kib": s.clients_rss_kib,
        })).collect::<Vec<_>>(),
        "ramps": ramps.iter().map(|r| serde_json::json!({
            "to": r.target, "opened": r.opened, "failed": r.failed, "resumed": r.resumed,
            "wall_s": r.wall_s, "edge_cpu_s": r.edge_cpu_s, "client_cpu_s": r.client_cpu_s,
        })).collect::<Vec<_>>(),
        "handshakes": hs_runs.iter().map(|r| serde_json::json!({
            "tls": r.tls.label(), "mode": if r.resumed_mode { "resumed" } else { "full" },
            "parallel": r.parallel, "done": r.done, "resumed": r.resumed, "failed": r.failed,
            "wall_s": r.wall_s, "edge_cpu_s": r.edge_cpu_s, "client_cpu_s": r.client_cpu_s,
        })).collect::<Vec<_>>(),
        "stopped": stopped,
        "failures": failures.len(),
    });
    println!("JSON {json}");
    drop(edge);
    if args.keep {
        let kept = dir.keep();
        println!("kept: {} (topology, edge log, state)", kept.display());
    }
    Ok(failures.is_empty())
}

/// Milliseconds of `seconds` per one of `count` ("-" for none).
/// Edge CPU ms per handshake by TLS version, mode and clients in parallel: the median over
/// the rounds, and every round's figure in the order run (a machine's noise is read there).
fn handshake_medians(runs: &[HsRun]) -> String {
    let mut out = String::from(
        "Edge CPU ms per handshake, median over rounds (and each round's, in the order run):\n\n\
         | TLS | mode | parallel | median | rounds |\n|---|---|---:|---:|---|\n",
    );
    let mut seen: Vec<(TlsVersion, bool, usize)> = Vec::new();
    for r in runs {
        let key = (r.tls, r.resumed_mode, r.parallel);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let mut figures: Vec<f64> = runs
            .iter()
            .filter(|o| (o.tls, o.resumed_mode, o.parallel) == key && o.done > 0)
            .map(|o| o.edge_cpu_s * 1000.0 / o.done as f64)
            .collect();
        let rounds = figures
            .iter()
            .map(|f| format!("{f:.3}"))
            .collect::<Vec<_>>()
            .join(", ");
        figures.sort_by(f64::total_cmp);
        let n = figures.len();
        let middle = if n % 2 == 1 {
            figures.get(n / 2).copied()
        } else {
            figures
                .get(n.saturating_sub(1) / 2..=n / 2)
                .map(|pair| pair.iter().sum::<f64>() / 2.0)
        };
        let median = middle.map_or_else(|| "-".to_string(), |m| format!("{m:.3}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {median} | {rounds} |",
            r.tls.label(),
            if r.resumed_mode { "resumed" } else { "full" },
            r.parallel,
        );
    }
    out
}

fn ms_per(seconds: f64, count: u64) -> String {
    if count == 0 {
        "-".into()
    } else {
        format!("{:.3}", seconds * 1000.0 / count as f64)
    }
}
