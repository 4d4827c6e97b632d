//! The two relays as processes of their own: coturn (`turnserver`) and `sipedge run
//! --topology`, each started fresh for one run (in the edge's namespace with `--netns`),
//! waited for, measured from `/proc/<pid>` and killed by its PID when dropped (pass, fail or
//! panic) or when the bench is interrupted ([`kill_running`]).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sipedge::core::turn::encode::{Writer, BINDING};
use sipedge::core::turn::stun::{self, Class};

use super::netns::{self, Net};

/// Where everything listens is [`Net`]'s (loopback or the namespace bed). Both servers
/// relay from its `relay_ip`, each from a port range of its own, below the ephemeral ports
/// and apart from the ranges the tests use (10000-19999, 30000-32699) and benches/relay.rs
/// (20000-29999 is its whole range, but it holds at most a few hundred at a time).
pub const SIPEDGE_PORTS: (u16, u16) = (21_000, 21_999);
pub const COTURN_PORTS: (u16, u16) = (23_000, 23_999);
pub const REALM: &str = "sipedge.test";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Coturn,
    Sipedge,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Coturn => "coturn",
            Kind::Sipedge => "sipedge",
        }
    }
}

/// What both servers are started from.
pub struct Setup {
    pub dir: PathBuf,
    pub turnserver: PathBuf,
    pub sipedge: PathBuf,
    /// The shared secret: coturn's `static-auth-secret` and the only key of sipedge's ring,
    /// so one minted credential works on both.
    pub secret: String,
    pub ring: PathBuf,
    /// `--relay-threads` for coturn; `None` leaves coturn's own default.
    pub coturn_relay_threads: Option<u32>,
    /// Loopback or the namespace bed.
    pub net: Net,
    /// `--sipedge-relay-toml`: `key = value` lines for sipedge's `[relay]` table (a key the
    /// bench sets is replaced, any other appended).
    pub relay_toml: Vec<String>,
}

pub use crate::children::kill_running;

/// A running server, killed (SIGKILL to its own PID) and reaped when dropped.
pub struct Server {
    pub kind: Kind,
    child: Child,
    pub pid: u32,
    /// TURN over UDP and over TCP listen on the same address.
    pub addr: SocketAddr,
    pub command: String,
    pub log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        crate::children::kill(&mut self.child);
    }
}

/// A port free for both UDP and TCP on `ip` right now.
fn free_port(ip: &str) -> Result<u16, String> {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind((ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(format!("no port free for both UDP and TCP on {ip}"))
}

fn shell_words(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().to_string();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The key of a `key = value` line (`--sipedge-relay-toml`), if it has one.
pub fn toml_key(line: &str) -> Option<&str> {
    let key = line.split_once('=')?.0.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    (!key.is_empty() && key.chars().all(bare)).then_some(key)
}

/// The topology `sipedge run` gets: dev certificates in the run's state directory, a next
/// hop nobody listens on (the SIP side is idle), the ring, and the relay as benches/relay.rs
/// configures it (relaying from the bed's `relay_ip`, the per-source quota and
/// unauthenticated budget lifted since every client shares one address). On loopback the
/// TURN listener is on the internal SIP address and loopback peers are allowed; in the
/// namespace bed it is on the external address (strict peer policy) and the peers' network
/// is allowed (`allow_peers`), and the clients' network is exempt from the firewall's
/// per-source connection limits (TURN over TCP: every client shares one address).
/// Bandwidth caps stay at their defaults (3000 kbit/s per allocation, 10000 per user).
/// `setup.relay_toml` lines replace the `[relay]` line with the same key, or are appended.
fn topology(setup: &Setup, port: u16) -> Result<String, String> {
    let net = &setup.net;
    let ext = net.at_edge(|| free_port(net.sip_external_ip))??;
    let int = net.at_edge(|| free_port(net.sip_internal_ip))??;
    let (sipedge_ip, relay_ip) = (net.sipedge_ip, net.relay_ip);
    let mut relay: Vec<String> = vec![
        format!("host = \"{sipedge_ip}\""),
        format!("listen_udp = [\"{sipedge_ip}:{port}\"]"),
        format!("listen_tcp = [\"{sipedge_ip}:{port}\"]"),
        format!("relay_ip = \"{relay_ip}\""),
        format!("port_min = {}", SIPEDGE_PORTS.0),
        format!("port_max = {}", SIPEDGE_PORTS.1),
        if net.netns {
            format!("allow_peers = [\"{}\"]", netns::PEER_NET)
        } else {
            "allow_loopback_peers = true".into()
        },
        "max_allocations_per_source = 1000000".into(),
        "unauthenticated_bytes_per_second = 100000000".into(),
    ];
    for line in &setup.relay_toml {
        match relay.iter_mut().find(|l| toml_key(l) == toml_key(line)) {
            Some(same) => same.clone_from(line),
            None => relay.push(line.clone()),
        }
    }
    let firewall = if net.netns {
        format!("[firewall]\nallow_sources = [\"{}\"]\n", netns::CLIENT_NET)
    } else {
        String::new()
    };
    Ok(format!(
        "state_dir = \"{state}\"\n\
         [edge]\nname = \"relaybench\"\npool_fqdn = \"edge.sipedge.test\"\nsip_domains = [\"{REALM}\"]\n\
         [external]\nsip = \"{sip_ext}:{ext}\"\nsip_host = \"edge.sipedge.test\"\n[external.tls]\ndev = true\n\
         [internal]\nsip = \"{sip_int}:{int}\"\n[internal.tls]\ndev = true\n\
         [next_hop]\nmembers = [\"127.0.0.1:9\"]\nserver_name = \"director.sipedge.test\"\n\
         [keys]\nring = \"{ring}\"\n\
         {firewall}\
         [relay]\n{relay}\n",
        state = setup.dir.join("sipedge-state").display(),
        sip_ext = net.sip_external_ip,
        sip_int = net.sip_internal_ip,
        ring = setup.ring.display(),
        relay = relay.join("\n"),
    ))
}

pub fn start(setup: &Setup, kind: Kind, run: usize) -> Result<Server, String> {
    let net = &setup.net;
    let ip = match kind {
        Kind::Coturn => net.coturn_ip,
        Kind::Sipedge => net.sipedge_ip,
    };
    let port = net.at_edge(|| free_port(ip))??;
    let log = setup.dir.join(format!("{}-{run}.log", kind.name()));
    let mut cmd;
    match kind {
        Kind::Coturn => {
            cmd = net.server_command(&setup.turnserver);
            cmd.args(["-n", "--no-tls", "--no-dtls", "--no-cli", "--simple-log"])
                .arg(format!("--listening-ip={}", net.coturn_ip))
                .arg(format!("--listening-port={port}"))
                .arg(format!("--relay-ip={}", net.relay_ip))
                .arg(format!("--min-port={}", COTURN_PORTS.0))
                .arg(format!("--max-port={}", COTURN_PORTS.1))
                .arg("--use-auth-secret");
            if net.netns {
                cmd.arg(format!("--allowed-peer-ip={}", netns::PEER_RANGE));
            } else {
                cmd.arg("--allow-loopback-peers");
            }
            cmd.arg(format!("--realm={REALM}"))
                .arg("--static-auth-secret=SECRET");
            if let Some(n) = setup.coturn_relay_threads {
                cmd.arg(format!("--relay-threads={n}"));
            }
            cmd.arg(format!("--userdb={}", setup.dir.join("turndb").display()))
                .arg(format!(
                    "--pidfile={}",
                    setup.dir.join("turnserver.pid").display()
                ))
                .arg(format!("--log-file={}", log.display()))
                .arg("--no-stdout-log");
        }
        Kind::Sipedge => {
            let file = setup.dir.join("sipedge.toml");
            std::fs::write(&file, topology(setup, port)?)
                .map_err(|e| format!("write {}: {e}", file.display()))?;
            cmd = net.server_command(&setup.sipedge);
            cmd.args(["run", "--topology"])
                .arg(&file)
                .env("RUST_LOG", "warn");
        }
    }
    // The secret is not printed; the command line shows where it goes.
    let command = shell_words(&cmd);
    if kind == Kind::Coturn {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().replace("SECRET", &setup.secret))
            .collect();
        let mut real = Command::new(cmd.get_program());
        real.args(args);
        cmd = real;
    }
    let out = std::fs::File::create(setup.dir.join(format!("{}-{run}.out", kind.name())))
        .map_err(|e| e.to_string())?;
    // Registered as it starts: an interrupt from here on kills it.
    let child = crate::children::spawn(
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out),
    )
    .map_err(|e| format!("start {}: {e}", kind.name()))?;
    let pid = child.id();
    let server = Server {
        kind,
        child,
        pid,
        addr: format!("{ip}:{port}").parse().map_err(|e| format!("{e}"))?,
        command,
        log,
    };
    net.at_clients(|| wait_ready(&server, net.client_ip))??;
    Ok(server)
}

/// Ready when it answers a STUN Binding request over UDP from `client_ip` and accepts TCP
/// (bounded: 20 s). Runs where the clients are (its sockets are made there).
fn wait_ready(server: &Server, client_ip: &str) -> Result<(), String> {
    let sock = UdpSocket::bind((client_ip, 0)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let request = Writer::new(Class::Request, BINDING, [7; 12]).finish_with_fingerprint();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 1500];
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not answer a Binding request within 20 s (see {} and its .out)",
                server.kind.name(),
                server.log.display()
            ));
        }
        if !alive(server.pid) {
            return Err(format!(
                "{} exited at start (see {} and its .out)",
                server.kind.name(),
                server.log.display()
            ));
        }
        let _ = sock.send_to(&request, server.addr);
        if let Ok(n) = sock.recv(&mut buf) {
            if stun::check(&buf[..n]).is_ok_and(|c| c.class == Class::Success) {
                break;
            }
        }
    }
    while std::net::TcpStream::connect_timeout(&server.addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{} does not accept TCP", server.kind.name()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

use crate::proc_stats::alive;
pub use crate::proc_stats::{clock_ticks_per_second, cpu_ticks};

/// One reading of the whole box's CPU time (`/proc/stat`: the `cpu` line, all CPUs, in clock
/// ticks) and when it was taken.
#[derive(Clone, Copy, Debug)]
pub struct BoxSample {
    at: Instant,
    /// CPUs online (the `cpuN` lines).
    cpus: u32,
    /// idle + iowait. With a tickless idle (`CONFIG_NO_HZ_IDLE`, this box) the kernel
    /// measures these at every idle entry and exit: exact to the 10 ms unit.
    idle: u64,
    /// user + nice + system + irq + softirq + steal (guest time is already in user): the
    /// scheduler tick's samples, one per tick (4 ms at HZ=250) to whatever runs then.
    ticked: u64,
    steal: u64,
    /// CPU 1's idle + iowait (with `--pin` the server's CPU), when there is a CPU 1.
    cpu1_idle: Option<u64>,
}

pub fn box_sample() -> Option<BoxSample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let at = Instant::now();
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u32;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice
    let steal = *f.get(7)?;
    let cpu1_idle = stat.lines().find(|l| l.starts_with("cpu1 ")).and_then(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        Some(f.get(3)? + f.get(4)?)
    });
    Some(BoxSample {
        at,
        cpus,
        idle: f.get(3)? + f.get(4)?,
        ticked: f.get(..3)?.iter().sum::<u64>() + f.get(5)? + f.get(6)? + steal,
        steal,
        cpu1_idle,
    })
}

impl BoxSample {
    /// The box's busy CPU-seconds from `self` to `later`: the time every CPU had, minus what
    /// it spent idle (or in iowait). Both sides are measured, not sampled, like the
    /// per-process figures it is compared with (utime + stime of a task are its exact
    /// runtime, split by the tick's samples).
    pub fn busy_s(&self, later: &BoxSample, ticks_per_second: f64) -> f64 {
        (later.at - self.at).as_secs_f64() * f64::from(self.cpus)
            - later.idle.saturating_sub(self.idle) as f64 / ticks_per_second
    }

    /// The same from the tick-sampled busy fields (user + nice + system + irq + softirq +
    /// steal): one sample per tick, to whatever runs at that instant. Only shown, for
    /// comparison: under this load it undercounts (box − generator from it came out below
    /// the server's own CPU in most runs, which a true total cannot), presumably because
    /// work woken by timers and short wake-ups is rarely running when the tick samples, while
    /// a task's utime + stime is its measured runtime.
    pub fn ticked_s(&self, later: &BoxSample, ticks_per_second: f64) -> f64 {
        later.ticked.saturating_sub(self.ticked) as f64 / ticks_per_second
    }

    /// CPU 1's busy seconds from `self` to `later` (measured like [`BoxSample::busy_s`]).
    pub fn cpu1_busy_s(&self, later: &BoxSample, ticks_per_second: f64) -> Option<f64> {
        let idle = later.cpu1_idle?.saturating_sub(self.cpu1_idle?);
        Some((later.at - self.at).as_secs_f64() - idle as f64 / ticks_per_second)
    }

    pub fn elapsed_s(&self, later: &BoxSample) -> f64 {
        (later.at - self.at).as_secs_f64()
    }

    pub fn steal_s(&self, later: &BoxSample, ticks_per_second: f64) -> f64 {
        later.steal.saturating_sub(self.steal) as f64 / ticks_per_second
    }
}

/// CPU ticks of every user-space process (kernel threads left out) except `skip`, by PID:
/// utime + stime + cutime + cstime, so that what a build's short-lived compilers spent
/// shows up in their parent when they are reaped (all of it, not only the part in a window:
/// a detector of other work on the box, not a measure).
pub fn user_space_ticks(skip: &[u32]) -> std::collections::HashMap<u32, u64> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if skip.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').and_then(|at| stat.get(at + 2..)) else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // After the state: ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
        // cmajflt utime stime cutime cstime.
        let (Some(&flags), Some(times)) = (f.get(5), f.get(10..14)) else {
            continue;
        };
        if flags & PF_KTHREAD == 0 {
            out.insert(pid, times.iter().sum());
        }
    }
    out
}

/// CPU-seconds the processes of the second reading gained since the first (all of it for
/// those that started in between).
pub fn others_s(
    before: &std::collections::HashMap<u32, u64>,
    after: &std::collections::HashMap<u32, u64>,
    ticks_per_second: f64,
) -> f64 {
    after
        .iter()
        .map(|(pid, b)| b.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / ticks_per_second
}

/// A field of `/proc/<pid>/status` (`VmRSS`, `Threads`) as a number (kB for memory).
pub fn status_field(pid: u32, name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()
}

/// `turnserver --version`, e.g. "4.6.1".
pub fn coturn_version(turnserver: &Path) -> String {
    Command::new(turnserver)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().last().unwrap_or("?").trim().to_string()
        })
        .unwrap_or_else(|| "?".into())
}

pub use crate::proc_stats::sipedge_commit;

/// What coturn's log says about its threads ("Total General servers: 2" and the like).
pub fn coturn_threads_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let parts: Vec<String> = text
        .lines()
        .filter_map(|l| Some(l.get(l.find("Total ")?..)?.trim().to_string()))
        .filter(|l| l.contains("servers"))
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Datagrams the kernel dropped on a process's UDP sockets so far (full receive queues):
/// the `drops` column of `/proc/<pid>/net/udp{,6}` (the tables of the process's network
/// namespace) for the socket inodes among its descriptors.
pub fn udp_drops(pid: u32) -> Option<u64> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if let Some(inode) = target.to_str().and_then(|t| {
            t.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        }) {
            inodes.insert(inode);
        }
    }
    let mut drops = 0;
    for table in ["udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(inode), Some(d)) = (f.get(9), f.get(12)) else {
                continue;
            };
            if inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i)) {
                drops += d.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(drops)
}
