//! sipedge's TURN relay against coturn on the same load, in the same run, alternating:
//! for each mode (UDP channels, Send/Data indications, TURN over TCP) and each rate, coturn
//! then sipedge, `--rounds` times, each a fresh server process measured on its own from
//! `/proc/<pid>/stat` (utime + stime of every thread). The load generator is this process.
//!
//! Load: `--clients` clients from 127.0.0.4, each with an allocation and a channel (or a
//! permission) to its own peer socket on 127.0.0.6; the clients together send `rate`
//! packets per second of `--size` bytes (a stamp of send time and sequence first), each peer
//! echoes every packet back through the relay. So the relay forwards 2 × rate packets a
//! second, each hop (client → peer, peer → client) counting once.
//!
//! Run: `cargo bench --bench relay_vs_coturn -- [--modes channel,send,tcp]
//! [--rates 5000,20000,50000] [--rounds 3] [--seconds 10] [--clients 50] [--netns]
//! [--sipedge-relay-toml 'key = value']…`; see benches/README.md. All traffic on loopback or
//! inside the bench's own namespaces; every process started is killed by its PID.
//!
//! Besides each server's own CPU, every run measures the whole box's busy CPU (all CPUs' time
//! minus their idle time, from `/proc/stat`) minus this process's, per relayed packet: the
//! cost of relaying to the machine, softirq and other kernel work charged to no process
//! included. An approximation: softirq that ran while the generator did is subtracted with
//! it, and whatever else the box runs is counted (each run reports other processes' CPU and
//! is marked when they were busy); see load.rs and benches/README.md.
//!
//! `--netns` (root) runs the whole bench on a bed of network namespaces joined by veth pairs
//! instead of loopback (netns.rs): clients in `sebench-out` (10.201.1.2), both servers in
//! `sebench-edge` (listening and relaying on 10.201.1.1), peers in `sebench-in`
//! (10.201.2.2), so each relayed packet crosses a real (virtual) link and its receive work
//! runs as softirq, as an eBPF fast path's would. The namespaces are deleted at exit, on
//! error, panic, SIGINT or SIGTERM.
//!
//! `--sipedge-relay-toml 'key = value'` (repeatable) adds a line to the `[relay]` table of
//! sipedge's generated topology (or replaces the bench's line for that key), e.g. to run the
//! same bench with and without a relay option.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    unreachable_pub
)]

#[path = "../common/children.rs"]
mod children;
#[path = "../common/proc.rs"]
mod proc_stats;

mod load;
mod netns;
mod servers;
mod turn;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use netns::Net;
use servers::Kind;
use sipedge::core::{credentials, keyring::Ring};
use sipedge::shell::keyfile;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// ChannelData over UDP.
    Channel,
    /// Send indications in, Data indications out, over UDP.
    Send,
    /// TURN over TCP, ChannelData framed on the stream (the relay is still UDP).
    Tcp,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Channel => "channel",
            Mode::Send => "send",
            Mode::Tcp => "tcp",
        }
    }

    fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "channel" => Ok(Mode::Channel),
            "send" => Ok(Mode::Send),
            "tcp" => Ok(Mode::Tcp),
            other => Err(format!("unknown mode {other:?} (channel, send, tcp)")),
        }
    }
}

struct Args {
    modes: Vec<Mode>,
    rates: Vec<u64>,
    servers: Vec<Kind>,
    clients: usize,
    rounds: usize,
    seconds: f64,
    warmup: f64,
    size: usize,
    tick_us: u64,
    coturn_relay_threads: Option<u32>,
    turnserver: Option<PathBuf>,
    /// Another sipedge binary (an older commit's, for an A/B against the same coturn).
    sipedge: Option<PathBuf>,
    /// The load generator on CPU 0, each server on CPU 1 (every thread of it).
    pin: bool,
    /// The namespace bed instead of loopback.
    netns: bool,
    /// Lines for sipedge's `[relay]` table.
    relay_toml: Vec<String>,
    /// Times a run marked `[box busy]` is run again.
    busy_retries: usize,
}

const USAGE: &str = "usage: cargo bench --bench relay_vs_coturn -- [--modes channel,send,tcp] \
     [--rates 5000,20000,50000] [--rounds 3] [--seconds 10] [--warmup 2] [--clients 50] \
     [--size 182] [--tick-us 200] [--servers coturn,sipedge] [--coturn-relay-threads N] \
     [--turnserver PATH] [--sipedge PATH] [--pin] [--netns] \
     [--sipedge-relay-toml 'key = value']... [--busy-retries 2]";

fn list<T>(s: &str, f: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    s.split(',').filter(|p| !p.is_empty()).map(f).collect()
}

fn rate(s: &str) -> Result<u64, String> {
    let (digits, mult) = match s.strip_suffix(['k', 'K']) {
        Some(d) => (d, 1000),
        None => (s, 1),
    };
    digits
        .parse::<u64>()
        .map(|v| v * mult)
        .map_err(|e| format!("rate {s:?}: {e}"))
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        modes: vec![Mode::Channel, Mode::Send, Mode::Tcp],
        rates: vec![5_000, 20_000, 50_000],
        servers: vec![Kind::Coturn, Kind::Sipedge],
        clients: 50,
        rounds: 3,
        seconds: 10.0,
        warmup: 2.0,
        size: 182,
        tick_us: 200,
        coturn_relay_threads: None,
        turnserver: None,
        sipedge: None,
        pin: false,
        netns: false,
        relay_toml: Vec::new(),
        busy_retries: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
        match arg.as_str() {
            "--modes" => a.modes = list(&value()?, Mode::parse)?,
            "--rates" => a.rates = list(&value()?, rate)?,
            "--servers" => {
                a.servers = list(&value()?, |s| match s {
                    "coturn" => Ok(Kind::Coturn),
                    "sipedge" => Ok(Kind::Sipedge),
                    other => Err(format!("unknown server {other:?}")),
                })?
            }
            "--clients" => a.clients = num(value()?)? as usize,
            "--rounds" => a.rounds = num(value()?)? as usize,
            "--seconds" => a.seconds = num(value()?)?,
            "--warmup" => a.warmup = num(value()?)?,
            "--size" => a.size = num(value()?)? as usize,
            "--tick-us" => a.tick_us = num(value()?)? as u64,
            "--coturn-relay-threads" => a.coturn_relay_threads = Some(num(value()?)? as u32),
            "--turnserver" => a.turnserver = Some(PathBuf::from(value()?)),
            "--sipedge" => a.sipedge = Some(PathBuf::from(value()?)),
            "--pin" => a.pin = true,
            "--netns" => a.netns = true,
            "--busy-retries" => a.busy_retries = num(value()?)? as usize,
            "--sipedge-relay-toml" => {
                let line = value()?.trim().to_string();
                if servers::toml_key(&line).is_none() || line.contains('\n') {
                    return Err(format!(
                        "--sipedge-relay-toml {line:?}: want one `key = value` line of [relay]"
                    ));
                }
                a.relay_toml.push(line);
            }
            // cargo passes --bench to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.modes.is_empty() || a.rates.is_empty() || a.servers.is_empty() {
        return Err("--modes, --rates and --servers need at least one value each".into());
    }
    if !(1..=1000).contains(&a.clients) || !(1..=100).contains(&a.rounds) {
        return Err("--clients must be in 1..=1000, --rounds in 1..=100".into());
    }
    if a.busy_retries > 10 {
        return Err("--busy-retries must be in 0..=10".into());
    }
    if !(1.0..=600.0).contains(&a.seconds) || !(0.0..=60.0).contains(&a.warmup) {
        return Err("--seconds must be in [1, 600], --warmup in [0, 60]".into());
    }
    if !(turn::STAMP_LEN..=1400).contains(&a.size) {
        return Err(format!("--size must be in {}..=1400", turn::STAMP_LEN));
    }
    if a.rates.iter().any(|&r| !(1..=500_000).contains(&r)) || !(10..=10_000).contains(&a.tick_us) {
        return Err("rates must be in 1..=500000 pps, --tick-us in 10..=10000".into());
    }
    Ok(a)
}

fn tool_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// One server's run at one mode and rate.
struct Run {
    kind: Kind,
    mode: Mode,
    rate: u64,
    m: load::Measured,
    /// Resident memory the allocations added, per allocation (KiB).
    rss_per_alloc: Option<f64>,
    /// Server CPU per client set-up (ms).
    setup_ms_per_alloc: Option<f64>,
    /// Over a second before the load (the server ready and idle): the box's busy CPU minus
    /// the generator's, and other user-space processes' CPU, in cores.
    background: Option<(f64, f64)>,
}

/// Other processes' CPU in a run's window (share of one core) above which the run is marked:
/// its box figure counts someone else's work.
const BUSY_BOX: f64 = 0.05;
/// Other processes' CPU (cores) over the second before the load above which the run waits.
const QUIET_BOX: f64 = 0.1;

impl Run {
    fn relayed(&self) -> u64 {
        self.m.at_peers + self.m.at_clients
    }
    /// Packets relayed per CPU-second of the server's process; none when the process spent
    /// less than five clock ticks (the kernel path relays without it: dividing by a tick or
    /// two printed figures in the trillions).
    fn per_cpu_s(&self) -> Option<f64> {
        (self.m.cpu_s >= 0.05).then(|| self.relayed() as f64 / self.m.cpu_s)
    }
    /// The box's CPU minus the generator's over the window, in seconds.
    fn box_cpu_s(&self) -> Option<f64> {
        Some(self.m.box_cpu_s? - self.m.gen_cpu_s)
    }
    /// µs of the box's CPU (minus the generator's) per relayed packet.
    fn box_us(&self) -> Option<f64> {
        let relayed = self.relayed();
        (relayed > 0).then_some(self.box_cpu_s()? * 1e6 / relayed as f64)
    }
    /// µs of CPU 1's busy time per relayed packet (with `--pin`: everything the server
    /// costs, in its process and in the kernel).
    fn cpu1_us(&self) -> Option<f64> {
        let relayed = self.relayed();
        (relayed > 0).then_some(self.m.cpu1_busy_s? * 1e6 / relayed as f64)
    }
    /// µs of the server process's CPU per relayed packet.
    fn proc_us(&self) -> Option<f64> {
        let relayed = self.relayed();
        (relayed > 0).then_some(self.m.cpu_s * 1e6 / relayed as f64)
    }
    /// The box's CPU (minus the generator's) that is not the server's, in seconds.
    fn unattributed_s(&self) -> Option<f64> {
        Some(self.box_cpu_s()? - self.m.cpu_s)
    }
    /// Other user-space processes spent more than [`BUSY_BOX`] of a core in the window, and
    /// so much box CPU is not the server's. Both: what the other processes gained counts
    /// the children they reaped in the window, even the part of their lives before it.
    fn box_busy(&self) -> bool {
        let limit = BUSY_BOX * self.m.window_s;
        self.m.others_s > limit && self.unattributed_s().is_none_or(|u| u > limit)
    }
    fn loss(&self) -> f64 {
        100.0 * (1.0 - self.m.came_back as f64 / self.m.sent.max(1) as f64)
    }
    fn loss_to_peer(&self) -> f64 {
        100.0 * (1.0 - self.m.reached_peer as f64 / self.m.sent.max(1) as f64)
    }
    fn rtt(&self, q: f64) -> Option<u32> {
        let r = &self.m.rtts;
        (!r.is_empty()).then(|| r[((r.len() - 1) as f64 * q).round() as usize])
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

struct Context {
    args: Args,
    setup: servers::Setup,
    ring: Ring,
    ticks_per_second: f64,
    /// The first command line of each server and what it said about its threads.
    commands: Vec<(Kind, String, String)>,
}

fn one_run(ctx: &mut Context, kind: Kind, mode: Mode, rate: u64, n: usize) -> Result<Run, String> {
    let server = servers::start(&ctx.setup, kind, n)?;
    if ctx.args.pin {
        pin(server.pid, 1)?;
    }
    let rss_ready = servers::status_field(server.pid, "VmRSS");
    let setup_cpu0 = servers::cpu_ticks(&server.pid.to_string());
    let now = sipedge::shell::clock::now_unix();
    let mut clients = Vec::with_capacity(ctx.args.clients);
    for i in 0..ctx.args.clients {
        // One user per client: the per-user quota is not what is measured.
        let cred = credentials::mint(&ctx.ring, &format!("load{i}@sipedge.test"), 3600, now)
            .map_err(|e| format!("mint: {e}"))?;
        let client = turn::setup(
            i,
            mode,
            server.addr,
            (&cred.username, &cred.password),
            ctx.args.size,
            &ctx.setup.net,
        )
        .map_err(|e| format!("{} client {i}: {e}", kind.name()))?;
        clients.push(client);
    }
    let rss_allocated = servers::status_field(server.pid, "VmRSS");
    // What the server spent on each client's set-up (401, Allocate, ChannelBind or
    // CreatePermission): an upper bound of an allocation's CPU. Ticks are 10 ms: run with
    // many clients (`--clients 1000`) for a figure worth reading.
    let setup_ms_per_alloc = setup_cpu0
        .zip(servers::cpu_ticks(&server.pid.to_string()))
        .map(|(a, b)| {
            b.saturating_sub(a) as f64 / ctx.ticks_per_second * 1000.0 / ctx.args.clients as f64
        });
    if !ctx.commands.iter().any(|(k, _, _)| *k == kind) {
        let threads =
            servers::status_field(server.pid, "Threads").map_or("?".into(), |t| t.to_string());
        let mut about = format!("{threads} threads in the process");
        if kind == Kind::Coturn {
            if let Some(line) = servers::coturn_threads_line(&server.log) {
                let _ = write!(about, "; its log: {line}");
            }
        }
        ctx.commands.push((kind, server.command.clone(), about));
    }
    let params = load::Params {
        rate,
        warmup: Duration::from_secs_f64(ctx.args.warmup),
        seconds: Duration::from_secs_f64(ctx.args.seconds),
        tick: Duration::from_micros(ctx.args.tick_us),
        server: server.addr,
        server_pid: server.pid,
        ticks_per_second: ctx.ticks_per_second,
    };
    // A second of nothing first: what the idle server and the kernel cost, and whether
    // someone else is using the box; if so, wait for it (up to 60 s) rather than measure
    // their work.
    let mut background = load::background(server.pid, ctx.ticks_per_second);
    let mut waited = 0;
    while background.is_some_and(|(_, others)| others > QUIET_BOX) && waited < 60 {
        if waited == 0 {
            println!(
                "  (other processes busy, {:.2} CPU-s in the last second with children they \
                 reaped: waiting up to 60 s for a quiet box)",
                background.map_or(0.0, |b| b.1)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
        waited += 2;
        background = load::background(server.pid, ctx.ticks_per_second);
    }
    let m = load::run(clients, &params)?;
    drop(server);
    let rss_per_alloc = rss_ready
        .zip(rss_allocated)
        .map(|(a, b)| b.saturating_sub(a) as f64 / ctx.args.clients as f64);
    Ok(Run {
        kind,
        mode,
        rate,
        m,
        rss_per_alloc,
        setup_ms_per_alloc,
        background,
    })
}

/// `--pin` was given (the run lines then show CPU 1's busy time).
static PINNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn pinned() -> bool {
    PINNED.load(std::sync::atomic::Ordering::Relaxed)
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn describe(r: &Run, label: &str) -> String {
    let m = &r.m;
    let mut s = format!(
        "{label} {:<7} offered {:>6.0}/s relayed {:>7.0}/s CPU {:>5.2} s = {:>7} pkts/CPU-s \
         loss {:.2}% (to peer {:.2}%) rtt p50 {} p99 {} µs RSS {} KiB/alloc set-up CPU {} ms/alloc \
         gen CPU {:.2} s; box − gen CPU {} s = {} µs/pkt (process {} µs/pkt; tick-sampled box \
         − gen {} s, steal {} s); before the load box − gen {} cores, others {} cores",
        r.kind.name(),
        m.sent as f64 / m.window_s.max(1e-9),
        r.relayed() as f64 / m.window_s.max(1e-9),
        m.cpu_s,
        opt(r.per_cpu_s(), 0),
        r.loss(),
        r.loss_to_peer(),
        r.rtt(0.5).map_or("-".into(), |v| v.to_string()),
        r.rtt(0.99).map_or("-".into(), |v| v.to_string()),
        opt(r.rss_per_alloc, 1),
        opt(r.setup_ms_per_alloc, 3),
        m.gen_cpu_s,
        opt(r.box_cpu_s(), 2),
        opt(r.box_us(), 2),
        opt(r.proc_us(), 2),
        opt(m.box_ticked_s.map(|t| t - m.gen_cpu_s), 2),
        opt(m.steal_s, 2),
        opt(r.background.map(|b| b.0), 2),
        opt(r.background.map(|b| b.1), 2),
    );
    if pinned() {
        let _ = write!(
            s,
            "; CPU 1 busy {} s = {} µs/pkt",
            opt(m.cpu1_busy_s, 2),
            opt(r.cpu1_us(), 2)
        );
    }
    if r.box_busy() {
        let _ = write!(
            s,
            " [box busy: other processes gained {:.2} CPU-s in the window, and box − gen − \
             server is {} s: the box figure counts someone else's work]",
            m.others_s,
            opt(r.unattributed_s(), 2),
        );
    }
    if let Some(drops) = m.server_drops.filter(|&d| d > 0) {
        let _ = write!(s, " [server UDP sockets dropped {drops}]");
    }
    if m.send_failures + m.skipped + m.echo_failures + m.foreign > 0 {
        let _ = write!(
            s,
            " [generator: {} send failures, {} skipped, {} echo failures, {} foreign frames]",
            m.send_failures, m.skipped, m.echo_failures, m.foreign
        );
    }
    s
}

fn summary(ctx: &Context, runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nMedians over rounds ({bed}; pkts/CPU-s = packets relayed, each hop once, per server \
         CPU-second; ratio = sipedge / coturn; box µs = µs of the whole box's CPU minus the \
         generator's per relayed packet, softirq included (approximate: see benches/README.md), \
         c/s = coturn / sipedge of it; proc µs = µs of the server process's CPU per relayed \
         packet; both ratios above 1: sipedge cheaper; loss = round-trip; rtt p50/p99 in µs):\n",
        bed = if ctx.args.netns {
            "network namespaces joined by veth pairs"
        } else {
            "loopback"
        },
    );
    let _ = writeln!(
        out,
        "{:<8} {:>6} | {:>10} {:>10} {:>6} | {:>12} {:>12} | {:>9} {:>9} {:>6} | {:>10} {:>10} | {:>7} {:>7} | {:>11} {:>11} | {:>9} {:>9}",
        "mode", "pps", "coturn", "sipedge", "ratio", "coturn CPU-s", "sipedge CPU-s",
        "box µs c", "box µs s", "c/s", "proc µs c", "proc µs s",
        "loss c%", "loss s%", "rtt c", "rtt s", "KiB/al c", "KiB/al s"
    );
    for &mode in &ctx.args.modes {
        for &rate in &ctx.args.rates {
            let of = |kind: Kind, f: &dyn Fn(&Run) -> Option<f64>| {
                median(
                    runs.iter()
                        .filter(|r| r.kind == kind && r.mode == mode && r.rate == rate)
                        .filter_map(f)
                        .collect(),
                )
            };
            let pc = |k| of(k, &|r| r.per_cpu_s());
            let (c, s) = (pc(Kind::Coturn), pc(Kind::Sipedge));
            let ratio = c.zip(s).map(|(c, s)| s / c);
            let box_us = |k| of(k, &|r| r.box_us());
            let (bc, bs) = (box_us(Kind::Coturn), box_us(Kind::Sipedge));
            let box_ratio = bc.zip(bs).map(|(c, s)| c / s);
            let rtt = |k| {
                let p50 = of(k, &|r| r.rtt(0.5).map(f64::from));
                let p99 = of(k, &|r| r.rtt(0.99).map(f64::from));
                format!("{}/{}", opt(p50, 0), opt(p99, 0))
            };
            let _ = writeln!(
                out,
                "{:<8} {:>6} | {:>10} {:>10} {:>6} | {:>12} {:>12} | {:>9} {:>9} {:>6} | {:>10} {:>10} | {:>7} {:>7} | {:>11} {:>11} | {:>9} {:>9}",
                mode.name(),
                rate,
                opt(c, 0),
                opt(s, 0),
                opt(ratio, 2),
                opt(of(Kind::Coturn, &|r| Some(r.m.cpu_s)), 2),
                opt(of(Kind::Sipedge, &|r| Some(r.m.cpu_s)), 2),
                opt(bc, 2),
                opt(bs, 2),
                opt(box_ratio, 2),
                opt(of(Kind::Coturn, &|r| r.proc_us()), 2),
                opt(of(Kind::Sipedge, &|r| r.proc_us()), 2),
                opt(of(Kind::Coturn, &|r| Some(r.loss())), 2),
                opt(of(Kind::Sipedge, &|r| Some(r.loss())), 2),
                rtt(Kind::Coturn),
                rtt(Kind::Sipedge),
                opt(of(Kind::Coturn, &|r| r.rss_per_alloc), 1),
                opt(of(Kind::Sipedge, &|r| r.rss_per_alloc), 1),
            );
        }
    }
    if ctx.args.pin {
        let _ = writeln!(
            out,
            "\nServer CPU (--pin: the server on CPU 1, the generator on CPU 0{}): µs of CPU 1's \
             busy time per relayed packet, and coturn / sipedge of it (above 1: sipedge cheaper):\n",
            if ctx.args.netns {
                "; the edge's receive softirq steered to CPU 1 and the clients' and peers' to CPU 0 by RPS, so CPU 1 holds all the relaying costs, in process and kernel"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "{:<8} {:>6} | {:>9} {:>9} {:>6}",
            "mode", "pps", "cpu1 µs c", "cpu1 µs s", "c/s"
        );
        for &mode in &ctx.args.modes {
            for &rate in &ctx.args.rates {
                let of = |kind: Kind| {
                    median(
                        runs.iter()
                            .filter(|r| r.kind == kind && r.mode == mode && r.rate == rate)
                            .filter_map(Run::cpu1_us)
                            .collect(),
                    )
                };
                let (c, s) = (of(Kind::Coturn), of(Kind::Sipedge));
                let _ = writeln!(
                    out,
                    "{:<8} {:>6} | {:>9} {:>9} {:>6}",
                    mode.name(),
                    rate,
                    opt(c, 2),
                    opt(s, 2),
                    opt(c.zip(s).map(|(c, s)| c / s), 2)
                );
            }
        }
    }
    let background: Vec<f64> = runs.iter().filter_map(|r| Some(r.background?.0)).collect();
    if let Some(med) = median(background.clone()) {
        let max = background.iter().copied().fold(f64::MIN, f64::max);
        let _ = writeln!(
            out,
            "\nIdle cost inside the box figures (box − generator CPU over 1 s before each run's \
             load, the server idle): median {med:.3} cores, max {max:.3}; at 2 × pps packets a \
             second, B cores add B × 1e6 / (2 × pps) µs per packet."
        );
    }
    let busy = runs.iter().filter(|r| r.box_busy()).count();
    if busy > 0 {
        let _ = writeln!(
            out,
            "{busy} run(s) marked [box busy] even after --busy-retries: other processes ran \
             during the window and their CPU is in those box figures; rerun on a quiet box."
        );
    }
    out
}

/// On SIGINT or SIGTERM: kills the servers still running (by their PIDs), deletes the
/// namespace bed (with `--netns`) and the run's temporary directory (the ring's secret is in
/// it), and exits with 130. Destructors do not run on a signal; this does their work.
fn watch_signals(netns: bool, dir: PathBuf) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // Registered here, before the load starts: a signal from now on is ours to handle.
    let (mut int, mut term) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .map_err(|e| format!("signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("rvc-signals".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            servers::kill_running();
            let _ = std::fs::remove_dir_all(&dir);
            if netns {
                for e in netns::teardown() {
                    eprintln!("netns: could not delete a namespace: {e}");
                }
            }
            eprintln!(
                "interrupted: servers killed{}",
                if netns { ", namespaces deleted" } else { "" }
            );
            std::process::exit(130);
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Pins every thread of `pid` to `cpu` (taskset, util-linux).
fn pin(pid: u32, cpu: u32) -> Result<(), String> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("taskset could not pin {pid} to CPU {cpu}"))
    }
}

fn main() -> ExitCode {
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
    // Before any thread starts: the generator's threads inherit CPU 0.
    PINNED.store(args.pin, std::sync::atomic::Ordering::Relaxed);
    if args.pin {
        if let Err(e) = pin(std::process::id(), 0) {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    }
    let Some(turnserver) = args
        .turnserver
        .clone()
        .or_else(|| tool_on_path("turnserver"))
    else {
        eprintln!("turnserver not found: apt-get install -y coturn (or --turnserver PATH)");
        return ExitCode::from(2);
    };
    let sipedge_bin = args
        .sipedge
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sipedge")));
    let dir = tempfile::Builder::new()
        .prefix("relay-vs-coturn")
        .tempdir()
        .expect("temporary directory");
    if let Err(e) = watch_signals(args.netns, dir.path().to_path_buf()) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    // Deleted when it drops at the end of main (or on a panic's unwinding).
    let (net, _bed) = if args.netns {
        match netns::Bed::create().and_then(|bed| {
            if args.pin {
                bed.steer_softirq()?;
            }
            Ok(bed)
        }) {
            Ok(bed) => (Net::NETNS, Some(bed)),
            Err(e) => {
                eprintln!("--netns: could not make the namespace bed (root needed): {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        (Net::LOOPBACK, None)
    };
    let now = sipedge::shell::clock::now_unix();
    let secret: String = keyfile::random_secret()
        .expect("random secret")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut ring = Ring::default();
    ring.import(&secret, now).expect("a ring with the secret");
    let ring_path = dir.path().join("ring.toml");
    keyfile::store(&ring_path, &ring, true).expect("ring file");
    let ring = keyfile::load(&ring_path).expect("ring loads");

    let total_runs = args.modes.len() * args.rates.len() * args.rounds * args.servers.len();
    let per_run = args.warmup + args.seconds + 3.5;
    println!(
        "relay_vs_coturn: coturn {} vs sipedge {} ({}); kernel {}, {} CPUs",
        servers::coturn_version(&turnserver),
        servers::sipedge_commit(),
        sipedge_bin.display(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "load: {} clients from {} (UDP or TCP), each with its own peer on {}; `pps` = packets per \
         second client → peer, all clients together, {} bytes each; every peer echoes, so the \
         relay forwards 2 × pps. Warm-up {} s, timed window {} s, {} round(s); {} runs, ~{:.0} min.",
        args.clients,
        net.client_ip,
        net.peer_ip,
        args.size,
        args.warmup,
        args.seconds,
        args.rounds,
        total_runs,
        total_runs as f64 * per_run / 60.0,
    );
    if args.netns {
        println!(
            "bed: network namespaces {} (clients {}) <veth> {} (servers on {}, {}) <veth> {} \
             (peers {})",
            netns::OUT,
            net.client_ip,
            netns::EDGE,
            net.relay_ip,
            net.sip_internal_ip,
            netns::IN,
            net.peer_ip,
        );
    }
    for &rate in &args.rates {
        let kbps = rate as f64 / args.clients as f64 * (args.size + 4) as f64 * 8.0 / 1000.0;
        if kbps > 2700.0 {
            println!(
                "warning: {rate} pps over {} clients is {kbps:.0} kbit/s per allocation, near or \
                 over sipedge's default cap (relay.max_kbps_per_allocation = 3000): use more \
                 --clients",
                args.clients
            );
        }
    }
    let mut ctx = Context {
        setup: servers::Setup {
            dir: dir.path().to_path_buf(),
            turnserver,
            sipedge: sipedge_bin,
            secret,
            ring: ring_path,
            coturn_relay_threads: args.coturn_relay_threads,
            net,
            relay_toml: args.relay_toml.clone(),
        },
        ring,
        ticks_per_second: servers::clock_ticks_per_second(),
        commands: Vec::new(),
        args,
    };

    let mut runs = Vec::new();
    let mut failures = 0;
    let mut n = 0;
    let (modes, rates, servers_, rounds) = (
        ctx.args.modes.clone(),
        ctx.args.rates.clone(),
        ctx.args.servers.clone(),
        ctx.args.rounds,
    );
    for &mode in &modes {
        for &rate in &rates {
            for round in 1..=rounds {
                for &kind in &servers_ {
                    n += 1;
                    let label = format!(
                        "[{n:>2}/{total_runs}] {:<7} {:>6} pps round {round}:",
                        mode.name(),
                        rate
                    );
                    // A run that other processes disturbed is run again (a fresh server),
                    // up to --busy-retries times; the last one counts.
                    for attempt in 0..=ctx.args.busy_retries {
                        match one_run(&mut ctx, kind, mode, rate, n) {
                            Ok(run) if run.box_busy() && attempt < ctx.args.busy_retries => {
                                println!("{} (run again)", describe(&run, &label));
                            }
                            Ok(run) => {
                                println!("{}", describe(&run, &label));
                                runs.push(run);
                                break;
                            }
                            Err(e) => {
                                failures += 1;
                                println!("{label} {:<7} FAILED: {e}", kind.name());
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    print!("{}", summary(&ctx, &runs));
    println!("\nServers as started (the secret shown as SECRET):");
    for (kind, command, about) in &ctx.commands {
        println!("  {}: {command}\n    {about}", kind.name());
    }
    if let Ok(text) = std::fs::read_to_string(dir.path().join("sipedge.toml")) {
        println!("  sipedge topology (last run):");
        for line in text.lines() {
            println!("    {line}");
        }
    }
    if failures > 0 {
        println!(
            "{failures} run(s) failed; logs kept in {}",
            dir.keep().display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
