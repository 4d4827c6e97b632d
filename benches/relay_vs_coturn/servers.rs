//! The two relays as processes of their own: coturn (`turnserver`) and `sipedge run
//! --topology`, each started fresh for one run, waited for, measured from `/proc/<pid>` and
//! killed by its PID when dropped (pass, fail or panic).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sipedge::core::turn::encode::{Writer, BINDING};
use sipedge::core::turn::stun::{self, Class};

/// Where everything listens (all loopback). Clients and peers are on addresses of their own,
/// so neither server ever sees the other's traffic.
pub const SIPEDGE_IP: &str = "127.0.0.2";
pub const COTURN_IP: &str = "127.0.0.3";
pub const CLIENT_IP: &str = "127.0.0.4";
pub const PEER_IP: &str = "127.0.0.6";
/// Both relay from 127.0.0.1, each from a port range of its own, below the ephemeral ports
/// and apart from the ranges the tests use (10000-19999, 30000-32699) and benches/relay.rs
/// (20000-29999 is its whole range, but it holds at most a few hundred at a time).
pub const RELAY_IP: &str = "127.0.0.1";
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
}

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
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// The topology `sipedge run` gets: dev certificates in the run's state directory, a next
/// hop nobody listens on (the SIP side is idle), the ring, and the relay as benches/relay.rs
/// configures it (internal listener, relaying from 127.0.0.1, loopback peers allowed, the
/// per-source quota and unauthenticated budget lifted since every client shares one
/// address). Bandwidth caps stay at their defaults (3000 kbit/s per allocation, 10000 per
/// user).
fn topology(setup: &Setup, port: u16) -> Result<String, String> {
    let ext = free_port(RELAY_IP)?;
    let int = free_port(SIPEDGE_IP)?;
    Ok(format!(
        "state_dir = \"{state}\"\n\
         [edge]\nname = \"relaybench\"\npool_fqdn = \"edge.sipedge.test\"\nsip_domains = [\"{REALM}\"]\n\
         [external]\nsip = \"{RELAY_IP}:{ext}\"\nsip_host = \"edge.sipedge.test\"\n[external.tls]\ndev = true\n\
         [internal]\nsip = \"{SIPEDGE_IP}:{int}\"\n[internal.tls]\ndev = true\n\
         [next_hop]\nmembers = [\"127.0.0.1:9\"]\nserver_name = \"director.sipedge.test\"\n\
         [keys]\nring = \"{ring}\"\n\
         [relay]\nhost = \"{SIPEDGE_IP}\"\n\
         listen_udp = [\"{SIPEDGE_IP}:{port}\"]\nlisten_tcp = [\"{SIPEDGE_IP}:{port}\"]\n\
         relay_ip = \"{RELAY_IP}\"\nport_min = {pmin}\nport_max = {pmax}\n\
         allow_loopback_peers = true\n\
         max_allocations_per_source = 1000000\n\
         unauthenticated_bytes_per_second = 100000000\n",
        state = setup.dir.join("sipedge-state").display(),
        ring = setup.ring.display(),
        pmin = SIPEDGE_PORTS.0,
        pmax = SIPEDGE_PORTS.1,
    ))
}

pub fn start(setup: &Setup, kind: Kind, run: usize) -> Result<Server, String> {
    let ip = match kind {
        Kind::Coturn => COTURN_IP,
        Kind::Sipedge => SIPEDGE_IP,
    };
    let port = free_port(ip)?;
    let log = setup.dir.join(format!("{}-{run}.log", kind.name()));
    let mut cmd;
    match kind {
        Kind::Coturn => {
            cmd = Command::new(&setup.turnserver);
            cmd.args(["-n", "--no-tls", "--no-dtls", "--no-cli", "--simple-log"])
                .arg(format!("--listening-ip={COTURN_IP}"))
                .arg(format!("--listening-port={port}"))
                .arg(format!("--relay-ip={RELAY_IP}"))
                .arg(format!("--min-port={}", COTURN_PORTS.0))
                .arg(format!("--max-port={}", COTURN_PORTS.1))
                .args(["--use-auth-secret", "--allow-loopback-peers"])
                .arg(format!("--realm={REALM}"))
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
            cmd = Command::new(&setup.sipedge);
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
        let mut real = Command::new(&setup.turnserver);
        real.args(args);
        cmd = real;
    }
    let out = std::fs::File::create(setup.dir.join(format!("{}-{run}.out", kind.name())))
        .map_err(|e| e.to_string())?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
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
    wait_ready(&server)?;
    Ok(server)
}

/// Ready when it answers a STUN Binding request over UDP and accepts TCP (bounded: 20 s).
fn wait_ready(server: &Server) -> Result<(), String> {
    let sock = UdpSocket::bind((CLIENT_IP, 0)).map_err(|e| e.to_string())?;
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

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.get(s.rfind(')')? + 2..)?.starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a whole process (every thread, live or exited), in clock ticks.
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
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

/// The checkout's commit, with "+dirty" when the tree has changes.
pub fn sipedge_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "?".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head}+dirty")
    } else {
        head
    }
}

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
/// the `drops` column of `/proc/net/udp{,6}` for the socket inodes among its descriptors.
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
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
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
