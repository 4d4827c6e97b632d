//! The load of one run, in this process (never the server's): a pacing thread sends every
//! client's packets at the run's total rate, and one receiving thread (a current-thread tokio
//! runtime) echoes at every peer and times what comes back at every client. The main thread
//! samples the server's CPU, this process's and the whole box's at the two ends of the timed
//! window.
//!
//! The box's CPU minus this process's is what relaying cost the machine, kernel included
//! (`--netns`: the veth and IP receive work runs as softirq, and an eBPF fast path would run
//! there too, charged to no server process). The box's busy time is the CPUs' time minus
//! their idle time, both measured (see `servers::BoxSample`); this process's is its
//! utime + stime. It is an approximation. Without `CONFIG_IRQ_TIME_ACCOUNTING` (this box)
//! softirq is not told apart from the task it interrupted: softirq processed while the
//! generator ran (typically the receive path of what it just sent, processed on the way out
//! of its own `sendto`, and so the server's receive side) counts as the generator's and is
//! subtracted with it, and softirq processed while a server ran counts as that server's
//! (in both its figures). Only softirq run from idle or in `ksoftirqd` is charged to no one
//! and found by the box figure alone. The split is alike for both servers on the same load,
//! but work a fast path moves into the softirq of the generator's sends would look free.
//! Everything else the box runs meanwhile (another build) is counted too: each run reports
//! what other user-space processes spent in its window.
//!
//! Timeline from `base`: `warmup` of load, then the timed window of `seconds`, then the
//! senders stop and the receivers wait `DRAIN` for packets still in flight, then stop.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::servers::{box_sample, cpu_ticks, others_s, udp_drops, user_space_ticks};
use super::turn::{payload_of, stamp, stamp_of, stream_frame_len, Client, Io};

/// How long receivers keep listening after the last packet was sent.
const DRAIN: Duration = Duration::from_millis(1000);
/// Bytes a TCP client queues in the generator when its socket does not take them; beyond it
/// packets are not sent (counted as send failures).
const MAX_PENDING: usize = 256 * 1024;

#[derive(Clone, Copy)]
pub struct Params {
    /// Packets per second client → peer, all clients together.
    pub rate: u64,
    pub warmup: Duration,
    pub seconds: Duration,
    /// Shortest sleep of the pacing thread: at high rates each wake-up sends the packets
    /// due by then (at 50 k pps and 200 µs, ~10).
    pub tick: Duration,
    pub server: SocketAddr,
    pub server_pid: u32,
    pub ticks_per_second: f64,
}

#[derive(Debug, Default)]
pub struct Measured {
    /// Wall time between the two CPU samples.
    pub window_s: f64,
    /// Server CPU (user + system, every thread) over the window.
    pub cpu_s: f64,
    /// This process's CPU over the window (the load generator).
    pub gen_cpu_s: f64,
    /// The whole box's busy CPU over the window (every CPU's time minus its idle and
    /// iowait), the same from the tick-sampled fields of `/proc/stat` (user + nice + system
    /// + irq + softirq + steal), and the steal (the hypervisor's) in them.
    pub box_cpu_s: Option<f64>,
    /// CPU 1's busy seconds over the window (with `--pin`, the server's CPU; with `--netns`
    /// too, the server's receive softirq as well, steered there by RPS).
    pub cpu1_busy_s: Option<f64>,
    pub box_ticked_s: Option<f64>,
    pub steal_s: Option<f64>,
    /// CPU other user-space processes (not this one, not the server) gained over the window,
    /// their reaped children included: work on the box that is not the bench's.
    pub others_s: f64,
    /// Packets sent by clients with a send time inside the window.
    pub sent: u64,
    /// Packets arriving inside the window at peers (hop client → peer) and at clients
    /// (hop peer → client): what the relay forwarded during the window.
    pub at_peers: u64,
    pub at_clients: u64,
    /// Of the packets sent inside the window: how many reached their peer, how many came back.
    pub reached_peer: u64,
    pub came_back: u64,
    /// Round-trip times (µs) of the packets sent inside the window that came back.
    pub rtts: Vec<u32>,
    /// Sends the generator's own sockets refused (full buffers), packets it skipped because it
    /// fell more than 20 ms behind, echo sends refused, and frames that were not load packets.
    pub send_failures: u64,
    pub skipped: u64,
    pub echo_failures: u64,
    pub foreign: u64,
    /// Datagrams the kernel dropped on the server's UDP sockets during the window (its
    /// receive queues overflowed: the server fell behind).
    pub server_drops: Option<u64>,
}

struct Shared {
    base: Instant,
    start_ns: u64,
    end_ns: u64,
    deadline: Instant,
    at_peers: AtomicU64,
    at_clients: AtomicU64,
    reached_peer: AtomicU64,
    came_back: AtomicU64,
    echo_failures: AtomicU64,
    foreign: AtomicU64,
    rtts: Mutex<Vec<u32>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn in_window(&self, ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&ns)
    }

    fn at_peer(&self, payload: &[u8]) {
        let Some(sent) = stamp_of(payload) else {
            self.foreign.fetch_add(1, Relaxed);
            return;
        };
        if self.in_window(self.now_ns()) {
            self.at_peers.fetch_add(1, Relaxed);
        }
        if self.in_window(sent) {
            self.reached_peer.fetch_add(1, Relaxed);
        }
    }

    fn at_client(&self, payload: Option<&[u8]>) {
        let Some(sent) = payload.and_then(stamp_of) else {
            self.foreign.fetch_add(1, Relaxed);
            return;
        };
        let now = self.now_ns();
        if self.in_window(now) {
            self.at_clients.fetch_add(1, Relaxed);
        }
        if self.in_window(sent) {
            self.came_back.fetch_add(1, Relaxed);
            let rtt = (now.saturating_sub(sent) / 1000).min(u64::from(u32::MAX)) as u32;
            self.rtts.lock().unwrap().push(rtt);
        }
    }
}

enum Tx {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
}

struct Sender {
    tx: Tx,
    frame: Vec<u8>,
    payload_at: usize,
}

impl Sender {
    /// Sends the frame as it is; false when the socket refused it.
    fn send(&mut self, server: SocketAddr) -> bool {
        match &mut self.tx {
            Tx::Udp(s) => s.send_to(&self.frame, server).is_ok(),
            Tx::Tcp(s, pending) => {
                if !pending.is_empty() {
                    match s.write(pending) {
                        Ok(n) => {
                            pending.drain(..n);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => return false,
                    }
                }
                if !pending.is_empty() {
                    if pending.len() + self.frame.len() > MAX_PENDING {
                        return false;
                    }
                    pending.extend_from_slice(&self.frame);
                    return true;
                }
                match s.write(&self.frame) {
                    Ok(n) => {
                        pending.extend_from_slice(&self.frame[n..]);
                        true
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        pending.extend_from_slice(&self.frame);
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    }
}

#[derive(Default)]
struct SendStats {
    sent_in_window: u64,
    failures: u64,
    skipped: u64,
}

/// The pacing thread: packet k (client k mod N) is due at base + k / rate; each wake-up sends
/// every packet due, stamped with the time it actually leaves. Stops at the window's end.
fn pace(mut senders: Vec<Sender>, p: &Params, shared: &Shared) -> SendStats {
    let mut stats = SendStats::default();
    let n = senders.len() as u64;
    let rate = u128::from(p.rate.max(1));
    let max_behind = (p.rate / 50).max(1); // 20 ms of packets
    let tick_ns = p.tick.as_nanos() as u64;
    if let Some(wait) = shared.base.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let mut k: u64 = 0;
    loop {
        let now = shared.now_ns();
        if now >= shared.end_ns {
            break;
        }
        let due = (u128::from(now) * rate / 1_000_000_000) as u64 + 1;
        if due > k + max_behind {
            stats.skipped += due - k - max_behind;
            k = due - max_behind;
        }
        while k < due {
            let s = &mut senders[(k % n) as usize];
            let t = shared.now_ns();
            let at = s.payload_at;
            stamp(&mut s.frame[at..], t, k);
            if s.send(p.server) {
                if shared.in_window(t) {
                    stats.sent_in_window += 1;
                }
            } else {
                stats.failures += 1;
            }
            k += 1;
        }
        let next = (u128::from(k) * 1_000_000_000 / rate) as u64;
        let now = shared.now_ns();
        let wait = next.saturating_sub(now).max(tick_ns);
        std::thread::sleep(Duration::from_nanos(
            wait.min(shared.end_ns.saturating_sub(now)),
        ));
    }
    stats
}

/// Reads `sock` until the run's deadline, handing each datagram and its sender to `on`.
async fn read_until_deadline(
    sock: &tokio::net::UdpSocket,
    shared: &Shared,
    mut on: impl FnMut(&[u8], std::net::SocketAddr),
) {
    let stop = tokio::time::sleep_until(shared.deadline.into());
    tokio::pin!(stop);
    let mut buf = [0u8; 2048];
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = sock.readable() => {
                if r.is_err() {
                    return;
                }
                while let Ok((n, from)) = sock.try_recv_from(&mut buf) {
                    on(&buf[..n], from);
                }
            }
        }
    }
}

async fn echo(sock: tokio::net::UdpSocket, shared: Arc<Shared>) {
    read_until_deadline(&sock, &shared, |datagram, from| {
        shared.at_peer(datagram);
        if sock.try_send_to(datagram, from).is_err() {
            shared.echo_failures.fetch_add(1, Relaxed);
        }
    })
    .await;
}

async fn client_udp(sock: tokio::net::UdpSocket, shared: Arc<Shared>) {
    read_until_deadline(&sock, &shared, |datagram, _| {
        shared.at_client(payload_of(datagram));
    })
    .await;
}

async fn client_tcp(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let stop = tokio::time::sleep_until(shared.deadline.into());
    tokio::pin!(stop);
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = stream.readable() => {
                if r.is_err() {
                    return;
                }
                loop {
                    match stream.try_read(&mut buf[filled..]) {
                        Ok(0) => return,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => return,
                    }
                    let mut at = 0;
                    while let Some(len) = stream_frame_len(&buf[at..filled]) {
                        shared.at_client(payload_of(&buf[at..at + len]));
                        at += len;
                    }
                    buf.copy_within(at..filled, 0);
                    filled -= at;
                    if filled == buf.len() {
                        // A frame larger than the buffer: not a load packet; give up.
                        return;
                    }
                }
            }
        }
    }
}

/// Over one second of nothing (the server ready and idle, the generator asleep): the box's
/// busy CPU minus this process's, and what other user-space processes spent, in cores. The
/// first is the idle cost of the server and the kernel, which lands in a run's box figure
/// too; the second is someone else's work.
pub fn background(server_pid: u32, ticks_per_second: f64) -> Option<(f64, f64)> {
    let skip = [std::process::id(), server_pid];
    let (others0, gen0, box0) = (user_space_ticks(&skip), cpu_ticks("self")?, box_sample()?);
    std::thread::sleep(Duration::from_secs(1));
    let (box1, gen1, others1) = (box_sample()?, cpu_ticks("self")?, user_space_ticks(&skip));
    let elapsed = box0.elapsed_s(&box1).max(1e-3);
    let gen = gen1.saturating_sub(gen0) as f64 / ticks_per_second;
    Some((
        (box0.busy_s(&box1, ticks_per_second) - gen) / elapsed,
        others_s(&others0, &others1, ticks_per_second) / elapsed,
    ))
}

/// Runs the load on set-up clients and measures the server over the window.
pub fn run(clients: Vec<Client>, p: &Params) -> Result<Measured, String> {
    let mut senders = Vec::with_capacity(clients.len());
    let mut receivers = Vec::with_capacity(clients.len());
    for c in clients {
        let tx = match &c.io {
            Io::Udp(s) => Tx::Udp(s.try_clone().map_err(|e| e.to_string())?),
            Io::Tcp(s) => Tx::Tcp(s.try_clone().map_err(|e| e.to_string())?, Vec::new()),
        };
        // Non-blocking from here on (the flag is the socket's, so the clones share it).
        match &c.io {
            Io::Udp(s) => s.set_nonblocking(true),
            Io::Tcp(s) => s.set_nonblocking(true),
        }
        .map_err(|e| e.to_string())?;
        c.peer.set_nonblocking(true).map_err(|e| e.to_string())?;
        senders.push(Sender {
            tx,
            frame: c.frame,
            payload_at: c.payload_at,
        });
        receivers.push((c.io, c.peer));
    }
    let expected = (p.rate as f64 * p.seconds.as_secs_f64() * 1.05) as usize + 1024;
    // Starts in 300 ms: time for the receiving thread to register its sockets.
    let base = Instant::now() + Duration::from_millis(300);
    let start_ns = p.warmup.as_nanos() as u64;
    let end_ns = start_ns + p.seconds.as_nanos() as u64;
    let shared = Arc::new(Shared {
        base,
        start_ns,
        end_ns,
        deadline: base + Duration::from_nanos(end_ns) + DRAIN,
        at_peers: AtomicU64::new(0),
        at_clients: AtomicU64::new(0),
        reached_peer: AtomicU64::new(0),
        came_back: AtomicU64::new(0),
        echo_failures: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        rtts: Mutex::new(Vec::with_capacity(expected)),
    });

    let receiving = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("rvc-receive".into())
            .spawn(move || -> Result<(), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for (io, peer) in receivers {
                        let peer =
                            tokio::net::UdpSocket::from_std(peer).map_err(|e| e.to_string())?;
                        tasks.spawn(echo(peer, shared.clone()));
                        match io {
                            Io::Udp(s) => {
                                let s = tokio::net::UdpSocket::from_std(s)
                                    .map_err(|e| e.to_string())?;
                                tasks.spawn(client_udp(s, shared.clone()));
                            }
                            Io::Tcp(s) => {
                                let s = tokio::net::TcpStream::from_std(s)
                                    .map_err(|e| e.to_string())?;
                                tasks.spawn(client_tcp(s, shared.clone()));
                            }
                        }
                    }
                    while tasks.join_next().await.is_some() {}
                    Ok(())
                })
            })
            .map_err(|e| e.to_string())?
    };
    let sending = {
        let shared = shared.clone();
        let params = *p;
        std::thread::Builder::new()
            .name("rvc-send".into())
            .spawn(move || pace(senders, &params, &shared))
            .map_err(|e| e.to_string())?
    };

    let pid = p.server_pid.to_string();
    let sleep_until = |ns: u64| {
        if let Some(wait) = (base + Duration::from_nanos(ns)).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
    };
    let skip = [std::process::id(), p.server_pid];
    // The other processes first and last: scanning /proc takes a few ms, the other
    // readings are taken together.
    sleep_until(start_ns.saturating_sub(20_000_000));
    let others0 = user_space_ticks(&skip);
    sleep_until(start_ns);
    let (t0, cpu0, gen0, box0) = (
        Instant::now(),
        cpu_ticks(&pid),
        cpu_ticks("self"),
        box_sample(),
    );
    let drops0 = udp_drops(p.server_pid);
    sleep_until(end_ns);
    let (box1, gen1, cpu1, t1) = (
        box_sample(),
        cpu_ticks("self"),
        cpu_ticks(&pid),
        Instant::now(),
    );
    let drops1 = udp_drops(p.server_pid);
    let others1 = user_space_ticks(&skip);
    let sent = sending.join().map_err(|_| "the pacing thread panicked")?;
    receiving
        .join()
        .map_err(|_| "the receiving thread panicked")??;

    let (Some(cpu0), Some(cpu1)) = (cpu0, cpu1) else {
        return Err("the server's /proc/<pid>/stat could not be read (did it exit?)".into());
    };
    let ticks = |a: Option<u64>, b: Option<u64>| {
        b.unwrap_or(0).saturating_sub(a.unwrap_or(0)) as f64 / p.ticks_per_second
    };
    let shared = Arc::try_unwrap(shared).map_err(|_| "receivers still running")?;
    let mut rtts = shared.rtts.into_inner().unwrap();
    rtts.sort_unstable();
    Ok(Measured {
        window_s: (t1 - t0).as_secs_f64(),
        cpu_s: (cpu1 - cpu0) as f64 / p.ticks_per_second,
        gen_cpu_s: ticks(gen0, gen1),
        box_cpu_s: box0
            .zip(box1)
            .map(|(a, b)| a.busy_s(&b, p.ticks_per_second)),
        cpu1_busy_s: box0
            .zip(box1)
            .and_then(|(a, b)| a.cpu1_busy_s(&b, p.ticks_per_second)),
        box_ticked_s: box0
            .zip(box1)
            .map(|(a, b)| a.ticked_s(&b, p.ticks_per_second)),
        steal_s: box0
            .zip(box1)
            .map(|(a, b)| a.steal_s(&b, p.ticks_per_second)),
        others_s: others_s(&others0, &others1, p.ticks_per_second),
        sent: sent.sent_in_window,
        at_peers: shared.at_peers.into_inner(),
        at_clients: shared.at_clients.into_inner(),
        reached_peer: shared.reached_peer.into_inner(),
        came_back: shared.came_back.into_inner(),
        rtts,
        send_failures: sent.failures,
        skipped: sent.skipped,
        echo_failures: shared.echo_failures.into_inner(),
        foreign: shared.foreign.into_inner(),
        server_drops: drops0.zip(drops1).map(|(a, b)| b.saturating_sub(a)),
    })
}
