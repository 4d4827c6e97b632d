//! Where the load and the servers live: all on loopback (the default), or with `--netns` on
//! a bed of three network namespaces joined by veth pairs, so that every relayed packet
//! crosses two (virtual) links and the kernel's receive work runs as softirq, the way it
//! does on a real box:
//!
//! ```text
//! sebench-out            sebench-edge                          sebench-in
//! clients 10.201.1.2 -- out0 <=> ext0 10.201.1.1 | int0 10.201.2.1 <=> in0 -- peers 10.201.2.2
//! ```
//!
//! Both servers run in `sebench-edge` (`ip netns exec`), listen and relay on 10.201.1.1; the
//! peers' default route goes through 10.201.2.1, and Linux delivers to any local address,
//! so no forwarding is needed (the relay is an application relay). The generator stays one
//! process: a socket keeps the namespace it was created in, so client sockets are made on a
//! thread that entered `sebench-out`, peer sockets on one that entered `sebench-in`, and the
//! load loops use them from anywhere.
//!
//! The namespaces are the bench's (prefix `sebench-`): made by [`Bed::create`], deleted when
//! the [`Bed`] drops (pass, fail or panic), by the signal watcher on SIGINT/SIGTERM, and at
//! start if a killed run left them behind.

use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

pub const OUT: &str = "sebench-out";
pub const EDGE: &str = "sebench-edge";
pub const IN: &str = "sebench-in";
const ALL: [&str; 3] = [OUT, EDGE, IN];

/// The peers' network: relays allocated on the edge's external address may reach it
/// (coturn's `--allowed-peer-ip`, sipedge's `relay.allow_peers`).
pub const PEER_NET: &str = "10.201.2.0/24";
pub const PEER_RANGE: &str = "10.201.2.0-10.201.2.255";
/// The clients' network: sipedge's firewall takes any number of TURN-over-TCP connections
/// from it (`firewall.allow_sources`; every client shares one address).
pub const CLIENT_NET: &str = "10.201.1.0/24";

/// The addresses of one bed, and where sockets for each side are made.
#[derive(Clone, Copy, Debug)]
pub struct Net {
    /// In namespaces (`--netns`) or all on loopback.
    pub netns: bool,
    pub client_ip: &'static str,
    pub peer_ip: &'static str,
    /// Where each server's TURN listener is (UDP and TCP, one port).
    pub coturn_ip: &'static str,
    pub sipedge_ip: &'static str,
    /// Where relayed sockets bind (both servers; port ranges of their own).
    pub relay_ip: &'static str,
    /// sipedge's SIP listeners (idle), which also define its interfaces' zones.
    pub sip_external_ip: &'static str,
    pub sip_internal_ip: &'static str,
}

impl Net {
    /// Everything on loopback: clients and peers on addresses of their own, so neither
    /// server ever sees the other's traffic. sipedge's TURN listener is on its internal SIP
    /// address (internal clients; loopback peers allowed).
    pub const LOOPBACK: Net = Net {
        netns: false,
        client_ip: "127.0.0.4",
        peer_ip: "127.0.0.6",
        coturn_ip: "127.0.0.3",
        sipedge_ip: "127.0.0.2",
        relay_ip: "127.0.0.1",
        sip_external_ip: "127.0.0.1",
        sip_internal_ip: "127.0.0.2",
    };

    /// The namespace bed: both servers listen and relay on the edge's external address
    /// (for sipedge an external listener: strict peer policy, the peers' network allowed).
    pub const NETNS: Net = Net {
        netns: true,
        client_ip: "10.201.1.2",
        peer_ip: "10.201.2.2",
        coturn_ip: "10.201.1.1",
        sipedge_ip: "10.201.1.1",
        relay_ip: "10.201.1.1",
        sip_external_ip: "10.201.1.1",
        sip_internal_ip: "10.201.2.1",
    };

    /// Runs `f` where the clients are: on a thread in `sebench-out`, or here.
    pub fn at_clients<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        self.at(OUT, f)
    }

    /// Runs `f` where the peers are: on a thread in `sebench-in`, or here.
    pub fn at_peers<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        self.at(IN, f)
    }

    /// Runs `f` where the servers are: on a thread in `sebench-edge`, or here.
    pub fn at_edge<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        self.at(EDGE, f)
    }

    fn at<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        if self.netns {
            within(ns, f)
        } else {
            Ok(f())
        }
    }

    /// The command that runs `program args…` where the servers are (`ip netns exec`
    /// execs the program: the child's PID is the server's).
    pub fn server_command(&self, program: &std::path::Path) -> Command {
        if self.netns {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", EDGE]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }
}

/// Runs `f` on a thread of its own that entered the network namespace `ns` (named by
/// `ip netns`, so `/var/run/netns/<ns>`). Sockets it creates stay in `ns` wherever they are
/// used later; the calling thread's namespace does not change.
pub fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(format!("rvc-{ns}"))
            .spawn_scoped(s, move || {
                move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(|e| format!("setns into {ns}: {e}"))?;
                Ok(f())
            })
            .map_err(|e| format!("thread for {ns}: {e}"))?
            .join()
            .map_err(|_| format!("the thread in {ns} panicked"))?
    })
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn exists(ns: &str) -> bool {
    std::path::Path::new(&format!("/var/run/netns/{ns}")).exists()
}

/// Serialises set-up and tear-down (the Drop guard and the signal watcher).
static BED_LOCK: Mutex<()> = Mutex::new(());

/// Deletes the bench's namespaces that exist (their veths go with them). Returns the ones
/// it could not delete.
pub fn teardown() -> Vec<String> {
    let _held = BED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ALL.iter()
        .rev()
        .filter(|ns| exists(ns))
        .filter_map(|ns| ip(&["netns", "del", ns]).err())
        .collect()
}

/// The namespace bed, deleted when dropped.
pub struct Bed(());

impl Bed {
    /// Makes the three namespaces, the two veth pairs (created with their ends already in
    /// the namespaces: nothing appears in the caller's namespace), the addresses and the
    /// default routes, and brings every link up (`lo` too). Needs root (CAP_SYS_ADMIN and
    /// CAP_NET_ADMIN). On error what was made is deleted again.
    pub fn create() -> Result<Bed, String> {
        let stale: Vec<&str> = ALL.iter().copied().filter(|ns| exists(ns)).collect();
        if !stale.is_empty() {
            println!("netns: deleting {stale:?}, left by an earlier run");
            let failed = teardown();
            if !failed.is_empty() {
                return Err(failed.join("; "));
            }
        }
        // From here the guard exists: an error on the way deletes what was made.
        let bed = Bed(());
        let _held = BED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for ns in ALL {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let veth = |a: &str, a_ns: &str, b: &str, b_ns: &str| {
            ip(&[
                "link", "add", "name", a, "netns", a_ns, "type", "veth", "peer", "name", b,
                "netns", b_ns,
            ])
        };
        veth("out0", OUT, "ext0", EDGE)?;
        veth("int0", EDGE, "in0", IN)?;
        for (ns, dev, addr) in [
            (OUT, "out0", "10.201.1.2/24"),
            (EDGE, "ext0", "10.201.1.1/24"),
            (EDGE, "int0", "10.201.2.1/24"),
            (IN, "in0", "10.201.2.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", OUT, "route", "add", "default", "via", "10.201.1.1"])?;
        ip(&["-n", IN, "route", "add", "default", "via", "10.201.2.1"])?;
        Ok(bed)
    }
}

impl Bed {
    /// With `--pin`: receive processing steered by RPS, the edge's interfaces to CPU 1 (the
    /// server's: its softirq, and a kernel fast path's work, lands with it) and the clients'
    /// and peers' to CPU 0 (the generator's). Without it a veth's receive softirq runs on
    /// the sender's CPU, and the relaying of a kernel path would count as the generator's.
    pub fn steer_softirq(&self) -> Result<(), String> {
        for (ns, dev, mask) in [
            (EDGE, "ext0", "2"),
            (EDGE, "int0", "2"),
            (OUT, "out0", "1"),
            (IN, "in0", "1"),
        ] {
            let path = format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus");
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "sh",
                    "-c",
                    &format!("echo {mask} > {path}"),
                ])
                .output()
                .map_err(|e| format!("ip netns exec: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{ns} {path}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for e in teardown() {
            eprintln!("netns: could not delete a namespace: {e}");
        }
    }
}
