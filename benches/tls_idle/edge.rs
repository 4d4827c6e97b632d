//! The edge as a process of its own (`sipedge run --topology FILE`), so that its memory is
//! its own: the topology it gets, starting it and waiting for it, and what is read from
//! `/proc` (its memory, CPU, descriptors and limits; the kernel's socket memory) and from its
//! operations listener (its own count of connections).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::support::{Pki, DIRECTOR_NAME, DOMAIN, EDGE_FQDN};

pub use crate::children::kill_running;

/// A TCP port free on `ip` right now.
pub fn free_port(ip: &str) -> Result<u16, String> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("bind {ip}: {e}"))
}

/// The edge's topology: external TLS on 127.0.0.1 and internal mutual TLS on 127.0.0.2 with
/// the bench's PKI, the Director stub as the only next hop, the operations listener on
/// 127.0.0.2, and `limits.max_connections` at its ceiling (1 000 000; the default, 10 000
/// per listener, would stop the ramp). The firewall keeps its defaults (every client comes
/// from an address of its own), but with `shared_sources` (a few addresses for all)
/// 127.0.0.0/8 is in `allow_sources`, else 100 connections per source and 10 new ones per
/// second would stop it.
pub fn topology(
    pki: &Pki,
    external: Option<&External>,
    state: &Path,
    (ext, int, ops): (u16, u16, u16),
    director: SocketAddr,
    shared_sources: bool,
) -> String {
    let (ext_tls, int_tls) = pki.tls_tables();
    let ext_tls = match external {
        Some(x) => format!(
            "[external.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            x.cert.display(),
            x.key.display()
        ),
        None => ext_tls,
    };
    let firewall = if shared_sources {
        "[firewall]\nallow_sources = [\"127.0.0.0/8\"]\n"
    } else {
        ""
    };
    format!(
        "state_dir = \"{state}\"\n\n\
         [edge]\nname = \"tlsidle\"\npool_fqdn = \"{EDGE_FQDN}\"\nsip_domains = [\"{DOMAIN}\"]\n\n\
         [external]\nsip = \"127.0.0.1:{ext}\"\nsip_host = \"{EDGE_FQDN}\"\n\n{ext_tls}\n\
         [internal]\nsip = \"127.0.0.2:{int}\"\n\n{int_tls}\n\
         [next_hop]\nmembers = [\"{director}\"]\nserver_name = \"{DIRECTOR_NAME}\"\n\n\
         [limits]\nmax_connections = 1000000\n\n\
         {firewall}\
         [operations]\nlisten = \"127.0.0.2:{ops}\"\n",
        state = state.display(),
    )
}

/// The running edge, killed (SIGKILL to its own PID) and reaped when dropped.
pub struct Edge {
    child: Child,
    pub pid: u32,
    pub ext: SocketAddr,
    pub ops: SocketAddr,
    pub log: PathBuf,
    pub command: String,
}

impl Drop for Edge {
    fn drop(&mut self) {
        crate::children::kill(&mut self.child);
    }
}

impl Edge {
    /// Writes the topology to `dir` and starts `sipedge run` on it (logging warnings to
    /// `dir/edge.log`; `env` added to its environment), then waits until `/healthz` answers 200 (the Director is up), at
    /// most 30 s.
    pub fn start(
        sipedge: &Path,
        dir: &Path,
        pki: &Pki,
        external: Option<&External>,
        director: SocketAddr,
        shared_sources: bool,
        env: &[(String, String)],
    ) -> Result<(Edge, String), String> {
        let ports = (
            free_port("127.0.0.1")?,
            free_port("127.0.0.2")?,
            free_port("127.0.0.2")?,
        );
        let text = topology(
            pki,
            external,
            &dir.join("state"),
            ports,
            director,
            shared_sources,
        );
        let file = dir.join("edge.toml");
        std::fs::write(&file, &text).map_err(|e| format!("{}: {e}", file.display()))?;
        let log = dir.join("edge.log");
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(sipedge);
        cmd.args(["run", "--topology"])
            .arg(&file)
            .env("RUST_LOG", "warn")
            // A file, not a terminal: no colours in the log (tracing-subscriber honours it).
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out);
        let extra: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let command = format!(
            "RUST_LOG=warn NO_COLOR=1 {extra}{} run --topology {}",
            sipedge.display(),
            file.display()
        );
        let child = crate::children::spawn(&mut cmd)
            .map_err(|e| format!("start {}: {e}", sipedge.display()))?;
        let pid = child.id();
        let edge = Edge {
            child,
            pid,
            ext: SocketAddr::from(([127, 0, 0, 1], ports.0)),
            ops: SocketAddr::from(([127, 0, 0, 2], ports.2)),
            log,
            command,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !alive(edge.pid) {
                return Err(format!(
                    "the edge exited at start:\n{}",
                    tail(&edge.log, 20)
                ));
            }
            if http_get(edge.ops, "/healthz").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the edge was not healthy within 30 s:\n{}",
                    tail(&edge.log, 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok((edge, text))
    }

    /// Sets the edge's soft open-file limit (`prlimit --pid`): to `soft`, else to its hard
    /// limit. Returns (soft, hard) as the edge has them then.
    pub fn set_nofile(&self, soft: Option<u64>) -> Result<(u64, u64), String> {
        let (_, hard) = nofile(self.pid).ok_or("cannot read the edge's limits")?;
        let soft = soft.unwrap_or(hard).min(hard);
        let out = Command::new("prlimit")
            .arg("--pid")
            .arg(self.pid.to_string())
            .arg(format!("--nofile={soft}:{hard}"))
            .output()
            .map_err(|e| format!("prlimit: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "prlimit: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        nofile(self.pid).ok_or_else(|| "cannot read the edge's limits".into())
    }

    pub fn alive(&self) -> bool {
        alive(self.pid)
    }

    /// The edge's own counters, from `/metrics`.
    pub fn metrics(&self) -> Result<Metrics, String> {
        let text = http_get(self.ops, "/metrics")?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .map(|v| v as u64)
        };
        Ok(Metrics {
            external: value("sipedge_connections{zone=\"external\"}").unwrap_or(0),
            accepted: value("sipedge_connections_accepted_total").unwrap_or(0),
            refused: value("sipedge_connections_refused_total").unwrap_or(0),
            handshakes_failed: value("sipedge_handshakes_failed_total").unwrap_or(0),
            tracked_sources: value("sipedge_tracked_sources").unwrap_or(0),
        })
    }

    /// Waits (at most `wait`) until the edge counts `n` external connections; what it
    /// counts then (`None`: its operations listener did not answer).
    pub fn wait_external(&self, n: u64, wait: Duration) -> Option<u64> {
        let deadline = Instant::now() + wait;
        loop {
            // Not answering (its own descriptors spent, say): no point waiting.
            let now = self.metrics().ok().map(|m| m.external);
            if now.is_none_or(|c| c == n) || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Lines of the log that say accepts fail (the descriptor limit: logged once per run of
    /// failures), and the first.
    pub fn accept_failures(&self) -> (usize, Option<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("open-file limit reached") || l.contains("accept failing"))
            .collect();
        (lines.len(), lines.first().map(|l| strip_ansi(l)))
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Metrics {
    pub external: u64,
    pub accepted: u64,
    pub refused: u64,
    pub handshakes_failed: u64,
    pub tracked_sources: u64,
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    strip_ansi(&lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// Without terminal colour sequences (ESC [ ... letter).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One HTTP/1.1 GET to the operations listener; the whole answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("operations {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out).to_string())
}

pub use crate::proc_stats::alive;

/// (soft, hard) open-file limit of a process, from `/proc/<pid>/limits`.
pub fn nofile(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |s: &str| {
        if s == "unlimited" {
            Some(u64::MAX)
        } else {
            s.parse().ok()
        }
    };
    Some((num(f.get(3)?)?, num(f.get(4)?)?))
}

/// Descriptors a process holds.
pub fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// A process's memory from `/proc/<pid>/smaps_rollup`, kB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    pub rss: u64,
    pub pss: u64,
    pub anon: u64,
}

pub fn mem(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some(Mem {
        rss: field("Rss")?,
        pss: field("Pss")?,
        anon: field("Anonymous")?,
    })
}

/// `VmRSS` of a process, kB.
pub fn vm_rss(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The kernel's TCP sockets in use and their buffer memory (pages), from
/// `/proc/net/sockstat` (this network namespace's sockets; the memory is the whole box's).
pub fn sockstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| {
        f.iter()
            .position(|&w| w == key)
            .and_then(|i| f.get(i + 1)?.parse::<u64>().ok())
    };
    Some((after("inuse")?, after("mem")?))
}

/// The slab caches a TCP connection's socket lives in, whole box, KiB: `TCP` (struct
/// tcp_sock), `sock_inode_cache` (socket + inode), `filp` (struct file), `dentry`,
/// `eventpoll_epi` and `eventpoll_pwq` (its epoll registration). Active objects × size.
/// `None` when `/proc/slabinfo` is not readable (it needs root).
pub const SOCKET_SLABS: [&str; 6] = [
    "TCP",
    "sock_inode_cache",
    "filp",
    "dentry",
    "eventpoll_epi",
    "eventpoll_pwq",
];

pub fn socket_slabs_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let mut bytes = 0u64;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(active), Some(size)) = (f.first(), f.get(1), f.get(3)) else {
            continue;
        };
        if SOCKET_SLABS.contains(name) {
            bytes += active.parse::<u64>().unwrap_or(0) * size.parse::<u64>().unwrap_or(0);
        }
    }
    Some(bytes / 1024)
}

/// An external certificate other than the dev PKI's: its files and the CA that issued it.
pub struct External {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An RSA 2048 external certificate for the edge's names (the key made as `sipedge cert
/// request --rsa` makes it), issued by a throw-away ECDSA CA written beside it in `dir`.
pub fn rsa_external(dir: &Path) -> Result<External, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, PKCS_RSA_SHA256,
    };
    let names = vec![EDGE_FQDN.to_string(), "127.0.0.1".to_string()];
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tls_idle RSA bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_key = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| format!("CA: {e}"))?;
    let (key_pem, _csr) =
        sipedge::tls::tools::request(&names, sipedge::tls::tools::KeyKind::Rsa2048)
            .map_err(|e| format!("RSA key: {e}"))?;
    let key = KeyPair::from_pem_and_sign_algo(&key_pem, &PKCS_RSA_SHA256)
        .map_err(|e| format!("RSA key: {e}"))?;
    let mut params = CertificateParams::new(names).map_err(|e| format!("names: {e}"))?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &*ca)
        .map_err(|e| format!("RSA certificate: {e}"))?;
    let x = External {
        ca: dir.join("rsa-ca.pem"),
        cert: dir.join("rsa-external.pem"),
        key: dir.join("rsa-external.key"),
    };
    for (path, text) in [(&x.ca, ca.pem()), (&x.cert, cert.pem()), (&x.key, key_pem)] {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(x)
}
