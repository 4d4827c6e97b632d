//! SIP capture (`[capture]`): a copy of every SIP message the edge reads or writes, on the
//! zones configured, as plain SIP after TLS with the connection's real addresses, encoded as
//! HEP v3 (`core::hep`) and sent to a collector in the internal zone (Homer, sngrep,
//! Wireshark).
//!
//! Owns: the switch every connection reads ([`CaptureSwitch`], swapped whole by a reload),
//! the bounded queue between the connections and the sender, and the sender task (one UDP
//! socket, or one TCP connection kept up with backoff). A connection never waits for the
//! collector: a copy that does not fit the queue (`max_queued_bytes`), or that the collector
//! cannot take, is dropped and counted on `/metrics`. Nothing of a captured message is ever
//! logged: the logs keep their redaction whatever the capture holds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::core::hep::{self, Captured, Transport};
use crate::core::sip::proxy::Side;
use crate::core::sip::session::Direction;
use crate::sync::RwLockExt;
use crate::topology::{CaptureConfig, CaptureTransport};

/// Copies sent to the collector in one TCP write, at most (bytes).
const TCP_BATCH: usize = 64 * 1024;
/// How long a TCP write to the collector may take before the connection is given up.
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Backoff between attempts to reach a TCP collector: doubling from the first to the last.
const RECONNECT: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// A HEP message's usual size beyond its payload (the buffer a copy starts with).
const HEP_OVERHEAD: usize = 128;

/// Capture's counters: they outlive a reload that replaces the configuration.
#[derive(Default)]
pub struct CaptureCounters {
    /// Copies taken into the queue.
    pub queued: AtomicU64,
    /// Copies the sender handed to the collector's socket.
    pub sent: AtomicU64,
    /// Dropped: the queue was at `max_queued_bytes`.
    pub dropped_queue_full: AtomicU64,
    /// Dropped: larger than a HEP message can be (65 535 bytes).
    pub dropped_too_long: AtomicU64,
    /// Dropped: the collector's socket refused them (unreachable, connection lost), or
    /// left in a replaced configuration's queue with its collector away.
    pub dropped_send_failed: AtomicU64,
    /// Whether the last send reached the collector's socket.
    pub collector_up: AtomicBool,
}

impl CaptureCounters {
    /// `(reason, count)` of the dropped copies, for `/metrics`.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        vec![
            (
                "queue_full",
                self.dropped_queue_full.load(Ordering::Relaxed),
            ),
            ("too_long", self.dropped_too_long.load(Ordering::Relaxed)),
            (
                "send_failed",
                self.dropped_send_failed.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// What every connection reads, per message, to know whether to copy it: one relaxed load
/// while capture is off.
#[derive(Default)]
pub struct CaptureSwitch {
    on: AtomicBool,
    tap: RwLock<Option<Arc<Tap>>>,
    pub counters: Arc<CaptureCounters>,
}

impl CaptureSwitch {
    /// The tap in force, if capture is on.
    pub fn tap(&self) -> Option<Arc<Tap>> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        self.tap.read_unpoisoned().clone()
    }

    /// Bytes of copies waiting in the queue in force.
    pub fn queued_bytes(&self) -> usize {
        self.tap()
            .map_or(0, |t| t.queued_bytes.load(Ordering::Relaxed))
    }

    /// The configuration in force (`/status`).
    pub fn config(&self) -> Option<CaptureConfig> {
        self.tap().map(|t| t.config.clone())
    }

    /// Puts `config` in force (or turns capture off): a new queue and sender; the old
    /// sender sends what its queue still holds and ends once no connection holds its tap
    /// (over TCP with its collector away, it drops what is left). Each queue has its own
    /// byte bound: what an old one still holds never takes the new one's room.
    pub fn install(
        &self,
        config: Option<&CaptureConfig>,
        local_ip: std::net::IpAddr,
        shutdown: watch::Receiver<bool>,
        runtime: &tokio::runtime::Handle,
    ) {
        let tap = config.map(|config| {
            let (tap, rx) = Tap::new(config.clone(), self.counters.clone());
            runtime.spawn(send_loop(
                config.clone(),
                local_ip,
                rx,
                Queued {
                    bytes: tap.queued_bytes.clone(),
                    counters: self.counters.clone(),
                },
                shutdown,
            ));
            tracing::info!(
                collector = %config.collector,
                transport = ?config.transport,
                agent_id = config.agent_id,
                external = config.external,
                internal = config.internal,
                bodies = config.bodies,
                "SIP capture on: copies of SIP messages (personal data) go to the collector"
            );
            Arc::new(tap)
        });
        if tap.is_none() && self.on.load(Ordering::Relaxed) {
            tracing::info!("SIP capture off");
        }
        self.on.store(tap.is_some(), Ordering::Relaxed);
        *self.tap.write_unpoisoned() = tap;
    }
}

/// One configuration's way into its sender's queue.
pub struct Tap {
    config: CaptureConfig,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes of copies in this queue: its bound.
    queued_bytes: Arc<AtomicUsize>,
    counters: Arc<CaptureCounters>,
}

/// What a sender gives back as it takes copies from its queue, and counts.
struct Queued {
    bytes: Arc<AtomicUsize>,
    counters: Arc<CaptureCounters>,
}

impl Queued {
    fn taken(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Tap {
    /// A tap and the receiving end of its queue (the sender's).
    fn new(
        config: CaptureConfig,
        counters: Arc<CaptureCounters>,
    ) -> (Tap, mpsc::UnboundedReceiver<Vec<u8>>) {
        // Unbounded in messages: the bound is in bytes (`max_queued_bytes`), charged before
        // a copy is queued and given back as the sender takes it.
        let (tx, rx) = mpsc::unbounded_channel();
        let tap = Tap {
            config,
            tx,
            queued_bytes: Arc::default(),
            counters,
        };
        (tap, rx)
    }

    /// Copies one message that crossed a connection of zone `side` between the edge's
    /// `local` address and the peer's `remote` one, if the configuration captures that
    /// zone. Never waits: a copy that does not fit is counted and dropped.
    pub fn record(
        &self,
        side: Side,
        local: SocketAddr,
        remote: SocketAddr,
        direction: Direction,
        message: &[u8],
    ) {
        let wanted = match side {
            Side::External => self.config.external,
            Side::Internal => self.config.internal,
        };
        if !wanted {
            return;
        }
        let payload = if self.config.bodies {
            message
        } else {
            hep::header_block(message)
        };
        let (src, dst) = match direction {
            Direction::Received => (remote, local),
            Direction::Sent => (local, remote),
        };
        let counters = &self.counters;
        // A full queue is refused before any work (the bound is checked again, exactly,
        // once the copy's size is known).
        if self.queued_bytes.load(Ordering::Relaxed) + payload.len() > self.config.max_queued_bytes
        {
            counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let unix_micros = super::clock::now_unix_micros();
        let mut copy = Vec::with_capacity(payload.len() + HEP_OVERHEAD);
        let encoded = hep::encode(
            &Captured {
                src,
                dst,
                // Every SIP connection of the edge is TLS, on both sides.
                transport: Transport::Tls,
                unix_micros,
                agent_id: self.config.agent_id,
                auth_key: self.config.password.as_deref(),
                correlation_id: hep::call_id(message),
                payload,
            },
            &mut copy,
        );
        if encoded.is_err() {
            counters.dropped_too_long.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Charged by its size; the sender gives the charge back as it takes the copy.
        let charge = copy.len();
        let before = self.queued_bytes.fetch_add(charge, Ordering::Relaxed);
        if before + charge > self.config.max_queued_bytes {
            self.queued_bytes.fetch_sub(charge, Ordering::Relaxed);
            counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.send(copy) {
            Ok(()) => {
                counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                // The sender is gone (shutdown).
                self.queued_bytes.fetch_sub(charge, Ordering::Relaxed);
                counters.dropped_send_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends the queue's copies to the collector until every tap of this configuration is
/// gone (a reload replaced it) or the edge shuts down.
async fn send_loop(
    config: CaptureConfig,
    local_ip: std::net::IpAddr,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queue: Queued,
    mut shutdown: watch::Receiver<bool>,
) {
    let sender = async {
        match config.transport {
            CaptureTransport::Udp => send_udp(&config, local_ip, &mut rx, &queue).await,
            CaptureTransport::Tcp => send_tcp(&config, local_ip, &mut rx, &queue).await,
        }
    };
    tokio::select! {
        () = sender => {}
        _ = shutdown.changed() => {}
    }
}

/// Logs when the collector becomes unreachable and when it is reached again, once each.
fn set_up(
    counters: &CaptureCounters,
    up: bool,
    collector: SocketAddr,
    why: Option<&std::io::Error>,
) {
    let was = counters.collector_up.swap(up, Ordering::Relaxed);
    if was == up {
        return;
    }
    match why {
        Some(e) if !up => {
            tracing::warn!(%collector, error = %e, "capture collector unreachable: copies are dropped until it is back")
        }
        _ if up => tracing::info!(%collector, "capture collector reached"),
        _ => {}
    }
}

/// Copies sent to a UDP collector with one system call, at most.
const UDP_BATCH: usize = 64;

async fn send_udp(
    config: &CaptureConfig,
    local_ip: std::net::IpAddr,
    rx: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    queue: &Queued,
) {
    let counters = &*queue.counters;
    // From the internal interface's address, so copies leave by the inside; connected, so
    // that one sendmmsg carries a batch.
    let socket = match tokio::net::UdpSocket::bind(SocketAddr::new(local_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "capture: cannot open a UDP socket; capture stops");
            return;
        }
    };
    if let Err(e) = socket.connect(config.collector).await {
        tracing::error!(error = %e, collector = %config.collector, "capture: cannot address the collector; capture stops");
        return;
    }
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(UDP_BATCH);
    while let Some(copy) = rx.recv().await {
        batch.push(copy);
        while batch.len() < UDP_BATCH {
            let Ok(more) = rx.try_recv() else { break };
            batch.push(more);
        }
        queue.taken(batch.iter().map(Vec::len).sum());
        let mut from = 0;
        while from < batch.len() {
            let rest = batch.get(from..).unwrap_or_default();
            let sent = socket
                .async_io(tokio::io::Interest::WRITABLE, || send_batch(&socket, rest))
                .await;
            match sent {
                Ok(n) => {
                    counters.sent.fetch_add(n as u64, Ordering::Relaxed);
                    set_up(counters, true, config.collector, None);
                    from += n.max(1);
                }
                Err(e) => {
                    // The first of the rest failed (an ICMP error, a full buffer): it is
                    // lost, the others are tried.
                    counters.dropped_send_failed.fetch_add(1, Ordering::Relaxed);
                    set_up(counters, false, config.collector, Some(&e));
                    from += 1;
                }
            }
        }
        batch.clear();
    }
}

/// One `sendmmsg` of `copies` on the connected socket: how many went.
fn send_batch(socket: &tokio::net::UdpSocket, copies: &[Vec<u8>]) -> std::io::Result<usize> {
    use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags};
    let iovs: Vec<[std::io::IoSlice<'_>; 1]> =
        copies.iter().map(|c| [std::io::IoSlice::new(c)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = copies
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut msgs: Vec<MMsgHdr<'_>> = iovs
        .iter()
        .zip(controls.iter_mut())
        .map(|(iov, control)| MMsgHdr::new(iov, control))
        .collect();
    Ok(sendmmsg(socket, &mut msgs, SendFlags::empty())?)
}

async fn send_tcp(
    config: &CaptureConfig,
    local_ip: std::net::IpAddr,
    rx: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    queue: &Queued,
) {
    let counters = &*queue.counters;
    let mut backoff = RECONNECT.0;
    let mut batch: Vec<u8> = Vec::new();
    let mut in_batch: u64 = 0;
    loop {
        let mut stream = match connect_tcp(config.collector, local_ip).await {
            Ok(s) => {
                backoff = RECONNECT.0;
                set_up(counters, true, config.collector, None);
                s
            }
            Err(e) => {
                set_up(counters, false, config.collector, Some(&e));
                // Copies wait in the queue (bounded) while the collector is away.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT.1);
                // Replaced (or capture off) with the collector away: what is left goes.
                if rx.is_closed() {
                    while let Ok(copy) = rx.try_recv() {
                        queue.taken(copy.len());
                        counters.dropped_send_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                continue;
            }
        };
        loop {
            if batch.is_empty() {
                let Some(copy) = rx.recv().await else {
                    return;
                };
                take(&mut batch, &mut in_batch, copy, queue);
                while batch.len() < TCP_BATCH {
                    let Ok(copy) = rx.try_recv() else { break };
                    take(&mut batch, &mut in_batch, copy, queue);
                }
            }
            let written = tokio::time::timeout(TCP_WRITE_TIMEOUT, stream.write_all(&batch)).await;
            match written {
                Ok(Ok(())) => {
                    counters.sent.fetch_add(in_batch, Ordering::Relaxed);
                    batch.clear();
                    in_batch = 0;
                    if batch.capacity() > TCP_BATCH * 2 {
                        batch = Vec::new();
                    }
                }
                failed => {
                    // What part of the batch the collector got is unknown: it is counted
                    // lost, and the stream (HEP framing) starts again on a new connection.
                    counters
                        .dropped_send_failed
                        .fetch_add(in_batch, Ordering::Relaxed);
                    batch.clear();
                    in_batch = 0;
                    let e = match failed {
                        Ok(Err(e)) => e,
                        _ => std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"),
                    };
                    set_up(counters, false, config.collector, Some(&e));
                    break;
                }
            }
        }
    }
}

fn take(batch: &mut Vec<u8>, in_batch: &mut u64, copy: Vec<u8>, queue: &Queued) {
    queue.taken(copy.len());
    batch.extend_from_slice(&copy);
    *in_batch += 1;
}

async fn connect_tcp(
    collector: SocketAddr,
    local_ip: std::net::IpAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match collector {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if local_ip.is_ipv4() == collector.is_ipv4() {
        socket.bind(SocketAddr::new(local_ip, 0))?;
    }
    let stream = tokio::time::timeout(TCP_CONNECT_TIMEOUT, socket.connect(collector))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn config(transport: CaptureTransport, collector: SocketAddr) -> CaptureConfig {
        CaptureConfig {
            collector,
            transport,
            agent_id: 7,
            password: None,
            external: true,
            internal: true,
            bodies: true,
            max_queued_bytes: 64 * 1024,
        }
    }

    const LOCAL: &str = "192.0.2.1:5061";
    const REMOTE: &str = "203.0.113.7:50432";

    fn invite(body: &str) -> String {
        format!(
            "INVITE sip:b SIP/2.0\r\nCall-ID: c-1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// The HEP messages in `bytes` (a stream or datagrams end to end), each whole.
    fn heps(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while bytes.len() >= 6 {
            assert_eq!(&bytes[..4], b"HEP3");
            let len = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
            out.push(bytes[..len].to_vec());
            bytes = &bytes[len..];
        }
        assert!(bytes.is_empty());
        out
    }

    fn ends_with(hep: &[u8], tail: &[u8]) -> bool {
        hep.windows(tail.len()).any(|w| w == tail)
    }

    #[test]
    fn copies_are_bounded_in_bytes_and_filtered_by_zone_and_body() {
        let counters = Arc::new(CaptureCounters::default());
        let mut c = config(CaptureTransport::Udp, "127.0.0.1:9".parse().unwrap());
        c.internal = false;
        c.bodies = false;
        let (tap, mut rx) = Tap::new(c, counters.clone());
        let (local, remote) = (LOCAL.parse().unwrap(), REMOTE.parse().unwrap());
        let msg = invite("v=0 secret sdp");
        tap.record(
            Side::Internal,
            local,
            remote,
            Direction::Sent,
            msg.as_bytes(),
        );
        assert_eq!(
            counters.queued.load(Ordering::Relaxed),
            0,
            "zone not captured"
        );
        tap.record(
            Side::External,
            local,
            remote,
            Direction::Received,
            msg.as_bytes(),
        );
        let copy = rx.try_recv().unwrap();
        assert!(
            ends_with(&copy, b"Content-Length: 14\r\n\r\n"),
            "header block only"
        );
        assert!(!ends_with(&copy, b"secret"));
        assert_eq!(tap.queued_bytes.load(Ordering::Relaxed), copy.len());
        // Nobody takes the copies: the queue fills to its bound and no further.
        let big = invite(&"x".repeat(8000));
        let mut c = config(CaptureTransport::Udp, "127.0.0.1:9".parse().unwrap());
        c.max_queued_bytes = 64 * 1024;
        let counters = Arc::new(CaptureCounters::default());
        let (tap, _rx) = Tap::new(c, counters.clone());
        for _ in 0..20 {
            tap.record(
                Side::External,
                local,
                remote,
                Direction::Sent,
                big.as_bytes(),
            );
        }
        let queued = counters.queued.load(Ordering::Relaxed);
        assert_eq!(queued, 8, "8 copies of ~8.1 kB fit 64 KiB");
        assert_eq!(counters.dropped_queue_full.load(Ordering::Relaxed), 12);
        assert!(tap.queued_bytes.load(Ordering::Relaxed) <= 64 * 1024);
        // Beyond a HEP message: dropped as too long, nothing charged.
        let huge = invite(&"y".repeat(70_000));
        let mut c = config(CaptureTransport::Udp, "127.0.0.1:9".parse().unwrap());
        c.max_queued_bytes = 1024 * 1024;
        let counters = Arc::new(CaptureCounters::default());
        let (tap, _rx) = Tap::new(c, counters.clone());
        tap.record(
            Side::External,
            local,
            remote,
            Direction::Sent,
            huge.as_bytes(),
        );
        assert_eq!(counters.dropped_too_long.load(Ordering::Relaxed), 1);
        assert_eq!(tap.queued_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_tcp_collector_gets_every_copy_once_it_is_reachable() {
        // The collector is not listening yet: the sender retries, copies wait.
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let collector: SocketAddr = ([127, 0, 0, 1], port).into();
        let switch = CaptureSwitch::default();
        let (_stop, shutdown) = watch::channel(false);
        switch.install(
            Some(&config(CaptureTransport::Tcp, collector)),
            [127, 0, 0, 1].into(),
            shutdown,
            &tokio::runtime::Handle::current(),
        );
        let (local, remote) = (LOCAL.parse().unwrap(), REMOTE.parse().unwrap());
        let tap = switch.tap().unwrap();
        for i in 0..50 {
            let msg = invite(&format!("n={i}"));
            tap.record(
                Side::External,
                local,
                remote,
                Direction::Received,
                msg.as_bytes(),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!switch.counters.collector_up.load(Ordering::Relaxed));
        let listener = tokio::net::TcpListener::bind(collector).await.unwrap();
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut got = Vec::new();
        let deadline =
            tokio::time::Instant::from_std(crate::shell::clock::now() + Duration::from_secs(10));
        while heps_complete(&got) < 50 {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(
                deadline,
                tokio::io::AsyncReadExt::read(&mut conn, &mut buf),
            )
            .await
            .unwrap()
            .unwrap();
            assert!(n > 0, "collector connection closed early");
            got.extend_from_slice(&buf[..n]);
        }
        let copies = heps(&got);
        assert_eq!(copies.len(), 50);
        for (i, copy) in copies.iter().enumerate() {
            assert!(ends_with(copy, format!("n={i}").as_bytes()), "in order");
        }
        assert_eq!(switch.counters.sent.load(Ordering::Relaxed), 50);
        assert_eq!(switch.queued_bytes(), 0);
        assert!(switch.counters.collector_up.load(Ordering::Relaxed));
        // Off: no tap, nothing copied.
        switch.install(
            None,
            [127, 0, 0, 1].into(),
            watch::channel(false).1,
            &tokio::runtime::Handle::current(),
        );
        assert!(switch.tap().is_none());
    }

    /// How many whole HEP messages `bytes` starts with.
    fn heps_complete(mut bytes: &[u8]) -> usize {
        let mut n = 0;
        while bytes.len() >= 6 {
            let len = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
            if bytes.len() < len || len < 6 {
                break;
            }
            bytes = &bytes[len..];
            n += 1;
        }
        n
    }

    /// A configuration replaced while its TCP collector is away: its queue's bytes never
    /// take the new queue's room, and its sender drops what is left and ends.
    #[tokio::test]
    async fn a_replaced_queue_is_dropped_and_never_takes_the_new_ones_room() {
        let dead = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let switch = CaptureSwitch::default();
        let runtime = tokio::runtime::Handle::current();
        let mut c = config(CaptureTransport::Tcp, dead);
        c.max_queued_bytes = 64 * 1024;
        // The edge keeps running (a dropped watch sender would read as a shutdown).
        let (_running, shutdown) = watch::channel(false);
        switch.install(Some(&c), [127, 0, 0, 1].into(), shutdown.clone(), &runtime);
        let (local, remote) = (LOCAL.parse().unwrap(), REMOTE.parse().unwrap());
        let big = invite(&"x".repeat(8000));
        let old = switch.tap().unwrap();
        for _ in 0..8 {
            old.record(
                Side::External,
                local,
                remote,
                Direction::Sent,
                big.as_bytes(),
            );
        }
        assert!(switch.queued_bytes() > 60 * 1024, "the old queue is full");
        // Replaced: the new queue starts empty, with all of its room.
        switch.install(Some(&c), [127, 0, 0, 1].into(), shutdown, &runtime);
        assert_eq!(switch.queued_bytes(), 0);
        let new = switch.tap().unwrap();
        new.record(
            Side::External,
            local,
            remote,
            Direction::Sent,
            big.as_bytes(),
        );
        assert_eq!(
            switch.counters.dropped_queue_full.load(Ordering::Relaxed),
            0
        );
        // The old sender, its taps gone and its collector away, drops its 8 and ends.
        drop(old);
        let until =
            tokio::time::Instant::from_std(crate::shell::clock::now() + Duration::from_secs(10));
        while switch.counters.dropped_send_failed.load(Ordering::Relaxed) < 8 {
            assert!(
                tokio::time::Instant::from_std(crate::shell::clock::now()) < until,
                "the old queue was kept"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
