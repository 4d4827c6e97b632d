//! TURN over TCP and over TLS (RFC 8656 §12.5, §3.1 `turns:`): the accept loop behind the
//! firewall's per-source limits and a slot per zone (TCP and TLS clients share them), and
//! each client's connection: frames read off the stream (ChannelData and Send indications
//! of its allocation through the read-locked relay path, sent to peers straight from the
//! read buffer), an authentication deadline (which the TLS handshake is within), and its
//! allocation closed with it.
//!
//! A plain TCP client is served by a relay worker, like a UDP one (issue 16: no task, waker
//! or scheduler hand-off per packet): the accept loop hands the socket over as a
//! [`TcpConn`], the worker reads it when epoll says it is readable (edge-triggered: a short
//! read means the socket is drained), keeps only an incomplete frame between reads, and
//! closes it at its deadline. A TLS client keeps a task of its own (it alone holds the TLS
//! state).
//!
//! What goes to a TCP client is written at once by whoever has it (a relay worker, the
//! control path) while nothing is pending; what the socket does not take waits in the
//! connection's pending bytes (bounded by `max_queued_bytes`: beyond it packets are
//! dropped, never buffered), written by the client's worker when the socket can take more
//! (its edge-triggered EPOLLOUT). Every write happens under the connection's lock, so frames
//! never interleave. What goes to a TLS client waits, as plaintext and under the same bound,
//! for the connection's task: it encrypts and writes.

use std::io::{Read, Write};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::stats::{
    AUTH_TIMEOUT, BANNED, HANDSHAKES_FULL, QUEUE_FULL, SOURCE_LIMIT, TLS_HANDSHAKE, ZONE_FULL,
};
use super::Turn;
use crate::core::firewall::SourceGuard;
use crate::core::turn::demux::{classify, PacketKind};
use crate::core::turn::policy::Origin;
use crate::core::turn::server::{Arrival, FiveTuple, Route, Transport, SEND};
use crate::core::turn::stun::{self, Class};
use crate::shell::clock;
use crate::shell::tls_stream::{self, ReadOutcome};
use crate::sync::{MutexExt, RwLockExt};

/// Bytes a TLS client's task keeps room for between reads.
const READ_SIZE: usize = 2048;

/// What a relay worker reads from a TCP client at a time (its own buffer, shared by its
/// clients: a client holds memory only for an incomplete frame).
pub(super) const TCP_READ: usize = 64 * 1024;

/// Reads of one client per wake-up before the worker serves the others (and comes back).
const READS_PER_WAKE: usize = 4;

/// A TCP client silent this long is closed (longer than the longest allocation lifetime
/// between Refreshes, which RFC 8656 clients send well before expiry).
const TCP_IDLE: Duration = Duration::from_secs(3600);

/// The bounds of TURN over TCP (from `[relay]`).
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// Connections per zone at once: the outside cannot starve the inside.
    pub max_clients_per_zone: usize,
    /// Time a connection has to authenticate (hold an allocation), else it is closed.
    pub auth_timeout: Duration,
    /// Bytes queued for one client that does not read.
    pub max_queued_bytes: usize,
}

/// How long a TLS client may keep the relay's bytes waiting (its socket full) before it is
/// closed: its task stops reading while it waits.
const TLS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// TURN over TLS: the server configuration (the external certificate, reloadable) and the
/// handshakes in progress at once.
pub struct TurnTls {
    pub config: Arc<rustls::ServerConfig>,
    pub handshakes: Arc<tokio::sync::Semaphore>,
}

/// Where a client's frames go.
enum Sink {
    /// Plain TCP: written at once by whoever has them (the socket is non-blocking), the
    /// rest by the client's relay worker.
    Tcp(std::net::TcpStream),
    /// TLS: left pending, as plaintext, for the connection's task to encrypt.
    Tls,
}

/// The writing side of a TURN-over-TCP (or TLS) client.
pub(super) struct TcpOut {
    sink: Sink,
    /// Bytes the socket has not taken yet (the client's worker writes them when it can;
    /// over TLS, plaintext the connection's task has not encrypted yet).
    pending: Mutex<Vec<u8>>,
    /// Wakes a TLS client's task for pending plaintext (or its close).
    more: Notify,
    max_bytes: usize,
    /// Its allocation is gone: the connection is closed once its pending bytes are written
    /// (plain TCP: at once, the kernel still sends what it took; TLS: by its task).
    closing: AtomicBool,
}

/// What became of bytes for a TCP client.
enum Queued {
    /// Written, or pending for the writer.
    Taken,
    /// Over the pending bound, or the connection failed: dropped.
    Dropped,
}

impl TcpOut {
    /// Closes the connection (its allocation is gone). Plain TCP: shut down both ways now;
    /// what the socket already took (the last answer) is still sent before the FIN, and the
    /// worker reads the end and lets the connection go. TLS: its task writes what is
    /// pending, sends close_notify and ends.
    fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        match &self.sink {
            Sink::Tcp(stream) => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            Sink::Tls => self.more.notify_one(),
        }
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Writes `parts` (one frame) at once if nothing is pending, else appends them to the
    /// pending bytes within the bound.
    fn push(&self, parts: &[&[u8]]) -> Queued {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut pending = self.pending.lock_unpoisoned();
        let mut written = 0;
        if let (true, Sink::Tcp(stream)) = (pending.is_empty(), &self.sink) {
            // A frame is at most three parts (header, data, padding): no allocation.
            let mut slices = [std::io::IoSlice::new(&[]); 3];
            for (slice, part) in slices.iter_mut().zip(parts) {
                *slice = std::io::IoSlice::new(part);
            }
            let used = slices.get(..parts.len().min(3)).unwrap_or_default();
            // A partial write or EAGAIN leaves the socket flagged for its next EPOLLOUT
            // edge, which wakes the client's worker to write what is pending.
            match (&*stream).write_vectored(used) {
                Ok(n) if n >= len => return Queued::Taken,
                Ok(n) => written = n,
                Err(e) if would_block(&e) => {}
                Err(_) => return Queued::Dropped,
            }
        }
        if pending.len() + (len - written) > self.max_bytes {
            // Only a whole frame may be dropped: a partly written one must be finished,
            // or the stream's framing is lost.
            if written == 0 {
                return Queued::Dropped;
            }
        }
        let was_empty = pending.is_empty();
        let mut skip = written;
        for part in parts {
            let from = skip.min(part.len());
            skip -= from;
            pending.extend_from_slice(part.get(from..).unwrap_or_default());
        }
        if was_empty && matches!(self.sink, Sink::Tls) {
            self.more.notify_one();
        }
        Queued::Taken
    }

    /// Writes what is pending for a plain TCP client, as much as the socket takes (its
    /// worker, at the socket's EPOLLOUT edge). An error when the connection failed.
    pub(super) fn write_pending(&self) -> std::io::Result<()> {
        let Sink::Tcp(stream) = &self.sink else {
            return Ok(());
        };
        let mut pending = self.pending.lock_unpoisoned();
        while !pending.is_empty() {
            match (&*stream).write(&pending) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let written = n.min(pending.len());
                    pending.drain(..written);
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        // A backlog's buffer is not kept for an idle connection.
        if pending.is_empty() && pending.capacity() > 64 * 1024 {
            *pending = Vec::new();
        }
        Ok(())
    }
}

/// Nothing more now (EINTR included: the next edge or deadline comes back to it).
fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// A plain TURN-over-TCP client as its relay worker holds it: the socket (in its writing
/// side, shared with whoever writes to the client), an incomplete frame read so far, and its
/// deadlines. Holds the zone's slot and the source's place in the firewall until it goes.
pub(super) struct TcpConn {
    out: Arc<TcpOut>,
    tuple: FiveTuple,
    origin: Origin,
    /// An incomplete frame (no memory held between frames).
    partial: Vec<u8>,
    /// Holds (or held) an allocation: the idle limit applies instead of the auth deadline.
    authenticated: bool,
    auth_deadline: Instant,
    last_read: Instant,
    _held: (tokio::sync::OwnedSemaphorePermit, Option<SourceTicket>),
}

impl TcpConn {
    /// The socket, for the worker's epoll set.
    pub(super) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.out.sink {
            Sink::Tcp(stream) => Some(stream.as_fd()),
            Sink::Tls => None,
        }
    }

    pub(super) fn out(&self) -> &TcpOut {
        &self.out
    }

    /// When the worker looks at the connection again: its authentication deadline until it
    /// holds an allocation, then the idle limit from its last read.
    pub(super) fn deadline(&self) -> Instant {
        if self.authenticated {
            self.last_read + TCP_IDLE
        } else {
            self.auth_deadline
        }
    }

    /// The client's port (spreads the clients over the workers).
    pub(super) fn client_port(&self) -> u16 {
        self.tuple.client.port()
    }
}

/// What a worker's read of a TCP client came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TcpRead {
    /// Drained (or nothing there): the next edge brings more.
    Open,
    /// Not drained after `READS_PER_WAKE` reads: the worker comes back without waiting.
    More,
    /// Closed by the client, failed, or not TURN: the worker closes it.
    Close,
}

/// A relay worker's buffers for its TCP clients, kept from read to read.
pub(super) struct TcpScratch {
    buf: Vec<u8>,
    routes: Vec<(Range<usize>, Route)>,
}

impl Default for TcpScratch {
    fn default() -> Self {
        TcpScratch {
            buf: vec![0; TCP_READ],
            routes: Vec::new(),
        }
    }
}

/// One TURN-over-TCP connection's place in its source's count, released on drop.
struct SourceTicket {
    guard: Arc<SourceGuard>,
    counted: crate::core::firewall::Counted,
}

impl Drop for SourceTicket {
    fn drop(&mut self) {
        self.guard.disconnected(self.counted, clock::now());
    }
}

/// How long a client's next read may take: until its authentication deadline while it
/// holds no allocation, then the idle limit.
fn read_wait(authenticated: bool, auth_deadline: std::time::Instant) -> Duration {
    if authenticated {
        TCP_IDLE
    } else {
        auth_deadline.saturating_duration_since(clock::now())
    }
}

/// Why the relay path stopped in a buffer of frames.
enum Stop {
    /// At a frame for the general path, of this length.
    General(usize),
    /// At bytes that are not TURN: the connection is closed.
    NotTurn,
}

impl Turn {
    /// A TCP client's frame through the general path (requests, and anything that is not
    /// an established allocation's relay traffic).
    fn tcp_general(&self, tuple: FiveTuple, origin: Origin, frame: &[u8]) {
        let arrival = Arrival {
            tuple,
            origin,
            now: clock::now(),
            now_unix: clock::now_unix(),
        };
        // A relayed port another process holds costs the answer (the allocation is
        // dropped): a UDP client retransmits, a TCP client does not, so the edge asks
        // again for it (another port).
        for _attempt in 0..3 {
            let mut out = Vec::new();
            let result = self.client_control(arrival, frame, &mut out);
            if let Err(why) = result {
                self.dropped(why, tuple.client, origin, Transport::Tcp);
            }
            if !self.execute(out).contains(&tuple.client) {
                break;
            }
        }
    }

    /// Writes one frame (`parts` together) to a TCP client, or leaves it pending; a client
    /// that does not read loses packets, not the relay's memory.
    /// Closes a TCP (or TLS) client's connection whose allocation is gone, once what is
    /// queued for it is written (a connection already gone: nothing to do).
    pub(super) fn close_tcp_client(&self, tuple: &FiveTuple) {
        if let Some(out) = self.tcp_clients.read_unpoisoned().get(tuple) {
            out.close();
        }
    }

    pub(super) fn to_tcp_client(&self, tuple: &FiveTuple, parts: &[&[u8]]) {
        let out = self.tcp_clients.read_unpoisoned().get(tuple).cloned();
        let len = parts.iter().map(|p| p.len()).sum();
        match out.map(|o| o.push(parts)) {
            Some(Queued::Taken) => self.stats.relayed(false, 1, len),
            _ => self.stats.count_drop(QUEUE_FULL),
        }
    }

    /// Accepts TURN clients on `listener`: plain TCP, or TLS when `tls` (a listener of
    /// `relay.listen_tls`).
    pub(super) async fn tcp_accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        origin: Origin,
        tls: bool,
    ) {
        let [external, internal] = &self.tcp_slots;
        let slots = match origin {
            Origin::External => external.clone(),
            Origin::Internal => internal.clone(),
        };
        loop {
            let Ok((stream, client)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // The firewall first, as for SIP: per-source connection rate and count, bans.
            let ticket = if origin == Origin::External {
                match self.guard.connect(client.ip(), clock::now()) {
                    Ok(counted) => Some(SourceTicket {
                        guard: self.guard.clone(),
                        counted,
                    }),
                    Err(refusal) => {
                        let label = match refusal {
                            crate::core::firewall::Refusal::Banned { .. } => BANNED,
                            _ => SOURCE_LIMIT,
                        };
                        self.stats.tcp_refusal(label);
                        continue;
                    }
                }
            } else {
                None
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.stats.tcp_refusal(ZONE_FULL);
                continue;
            };
            let Ok(server) = stream.local_addr() else {
                continue;
            };
            // Media goes out frame by frame (TCP_NODELAY, from the listener: Nagle's
            // algorithm cost 2.6 ms per packet at 400 pps), and the kernel holds no more
            // for a client than the edge would: without a cap, send-buffer autotuning took
            // 1.7 MB for a client that does not read.
            let _ = socket2::SockRef::from(&stream)
                .set_send_buffer_size(self.tcp_limits.max_queued_bytes.clamp(16 << 10, 1 << 20));
            let tuple = FiveTuple {
                client,
                server,
                transport: Transport::Tcp,
            };
            if tls {
                let task = self
                    .clone()
                    .tls_client(stream, tuple, origin, (slot, ticket));
                self.tasks.lock_unpoisoned().spawn(task);
            } else {
                self.tcp_client(stream, tuple, origin, (slot, ticket));
            }
        }
    }

    /// The frames at the start of `buf` from `tuple`'s client: relayed (the relay path),
    /// or handled by the general path; an incomplete frame is left. How many bytes were
    /// consumed, and whether what followed was not TURN (the connection is then closed).
    fn client_frames(
        &self,
        tuple: FiveTuple,
        origin: Origin,
        buf: &[u8],
        routes: &mut Vec<(Range<usize>, Route)>,
        authenticated: &mut bool,
    ) -> (usize, bool) {
        let mut consumed = 0;
        loop {
            // The relay path first: the frames of an established allocation up to the next
            // other one, under one read lock, sent from the buffer.
            routes.clear();
            let mut stop = None;
            {
                let server = self.read_server();
                let now = clock::now();
                loop {
                    let rest = buf.get(consumed..).unwrap_or_default();
                    let len = match crate::core::turn::channel::stream_frame_len(
                        rest,
                        crate::core::turn::stun::MAX_MESSAGE,
                    ) {
                        Ok(Some(len)) => len,
                        Ok(None) => break,
                        Err(_) => {
                            stop = Some(Stop::NotTurn);
                            break;
                        }
                    };
                    let frame = rest.get(..len).unwrap_or_default();
                    let routed = match classify(frame) {
                        PacketKind::ChannelData => server.channel_to_peer(&tuple, frame, now),
                        PacketKind::Stun => match stun::check(frame) {
                            Ok(c) if c.class == Class::Indication && c.method == SEND => {
                                server.send_to_peer(&tuple, frame, &c, now)
                            }
                            _ => {
                                stop = Some(Stop::General(len));
                                break;
                            }
                        },
                        _ => {
                            stop = Some(Stop::General(len));
                            break;
                        }
                    };
                    self.stats.hot().client_packets(1);
                    match routed {
                        Ok(route) => routes.push((consumed..consumed + len, route)),
                        Err(why) => self.stats.drop(why),
                    }
                    consumed += len;
                }
            }
            for (frame, route) in routes.iter() {
                let payload = buf
                    .get(frame.clone())
                    .and_then(|f| f.get(route.data.clone()))
                    .unwrap_or_default();
                if let Some(sock) = self.relay_socket(route.relay) {
                    let sent = sock.try_send(route.peer, payload, None);
                    self.stats.sent(sent, true, 1, payload.len());
                }
            }
            match stop {
                None => return (consumed, false),
                Some(Stop::NotTurn) => return (consumed, true),
                Some(Stop::General(len)) => {
                    self.stats.hot().client_packets(1);
                    let frame = buf.get(consumed..consumed + len).unwrap_or_default();
                    self.tcp_general(tuple, origin, frame);
                    consumed += len;
                    *authenticated = *authenticated || self.read_server().has_allocation(&tuple);
                }
            }
        }
    }

    /// A client's connection is up: where the relay's frames for it go from now on.
    fn client_joined(&self, tuple: FiveTuple, sink: Sink) -> Arc<TcpOut> {
        self.stats.tcp_clients.fetch_add(1, Ordering::Relaxed);
        let out = Arc::new(TcpOut {
            sink,
            pending: Mutex::new(Vec::new()),
            more: Notify::new(),
            max_bytes: self.tcp_limits.max_queued_bytes,
            closing: AtomicBool::new(false),
        });
        self.tcp_clients
            .write_unpoisoned()
            .insert(tuple, out.clone());
        out
    }

    /// A client's connection is over: its allocation goes with it.
    fn client_gone(&self, tuple: FiveTuple) {
        self.tcp_clients.write_unpoisoned().remove(&tuple);
        let mut out = Vec::new();
        self.lock_server().client_closed(tuple, &mut out);
        self.execute(out);
        self.stats.tcp_clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// A plain TCP client's connection is accepted: from now on its relay worker serves it.
    /// Until it holds an allocation it has `auth_timeout`, then it is closed: nobody holds a
    /// slot without authenticating.
    fn tcp_client(
        &self,
        stream: tokio::net::TcpStream,
        tuple: FiveTuple,
        origin: Origin,
        held: (tokio::sync::OwnedSemaphorePermit, Option<SourceTicket>),
    ) {
        // Out of tokio's reactor (still non-blocking), into a worker's epoll set.
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let now = clock::now();
        let conn = TcpConn {
            out: self.client_joined(tuple, Sink::Tcp(stream)),
            tuple,
            origin,
            partial: Vec::new(),
            authenticated: false,
            auth_deadline: now + self.tcp_limits.auth_timeout,
            last_read: now,
            _held: held,
        };
        if let Err(conn) = self.workers.tcp(conn) {
            self.tcp_closed(*conn);
        }
    }

    /// Reads a TCP client whose socket is readable (its relay worker, at the edge): the
    /// frames relayed or handled, an incomplete one kept, until the socket is drained.
    pub(super) fn tcp_readable(&self, conn: &mut TcpConn, s: &mut TcpScratch) -> TcpRead {
        let Sink::Tcp(stream) = &conn.out.sink else {
            return TcpRead::Close;
        };
        for _ in 0..READS_PER_WAKE {
            let n = match (&*stream).read(&mut s.buf) {
                Ok(0) => return TcpRead::Close,
                Ok(n) => n,
                Err(e) if would_block(&e) => return TcpRead::Open,
                Err(_) => return TcpRead::Close,
            };
            conn.last_read = clock::now();
            let read = s.buf.get(..n).unwrap_or_default();
            let not_turn = if conn.partial.is_empty() {
                // The common case: whole frames, relayed straight from the worker's buffer.
                let (consumed, not_turn) = self.client_frames(
                    conn.tuple,
                    conn.origin,
                    read,
                    &mut s.routes,
                    &mut conn.authenticated,
                );
                conn.partial
                    .extend_from_slice(read.get(consumed..).unwrap_or_default());
                not_turn
            } else {
                conn.partial.extend_from_slice(read);
                let (consumed, not_turn) = self.client_frames(
                    conn.tuple,
                    conn.origin,
                    &conn.partial,
                    &mut s.routes,
                    &mut conn.authenticated,
                );
                conn.partial.drain(..consumed.min(conn.partial.len()));
                if conn.partial.is_empty() {
                    conn.partial = Vec::new(); // nothing held between frames
                } else if conn.partial.capacity() > 4 * conn.partial.len().max(READ_SIZE) {
                    // What waits is less than a frame: a large read's room is not kept.
                    conn.partial.shrink_to_fit();
                }
                not_turn
            };
            if not_turn {
                return TcpRead::Close;
            }
            // A short read drained the socket: what arrives next is a new edge.
            if n < s.buf.len() {
                return TcpRead::Open;
            }
        }
        TcpRead::More
    }

    /// A TCP client's deadline came (`now` is past [`TcpConn::deadline`] as it was): the
    /// next one, or `None` when the connection is to be closed (never authenticated in
    /// time, or idle past the limit).
    pub(super) fn tcp_due(&self, conn: &TcpConn, now: Instant) -> Option<Instant> {
        let next = conn.deadline();
        if now < next {
            return Some(next); // it read since, or authenticated
        }
        if !conn.authenticated {
            self.stats.tcp_refusal(AUTH_TIMEOUT);
        }
        None
    }

    /// A TCP client's connection is over (its worker let go of it): its allocation goes
    /// with it, the client sees it closed, and its slot and place are given back.
    pub(super) fn tcp_closed(&self, conn: TcpConn) {
        self.client_gone(conn.tuple);
        if let Sink::Tcp(stream) = &conn.out.sink {
            // Whoever still holds the writing side for a moment writes into a closed socket.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// One TURN-over-TLS client (`turns:`): the handshake, at most `handshakes` of them at
    /// once and within the authentication deadline, then as over TCP, the frames read from
    /// the decrypted stream; what the relay has for the client is encrypted and written by
    /// this task.
    fn tls_client(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        tuple: FiveTuple,
        origin: Origin,
        held: (tokio::sync::OwnedSemaphorePermit, Option<SourceTicket>),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let Some(tls) = self.tls.as_ref() else {
                return;
            };
            let auth_deadline = clock::now() + self.tcp_limits.auth_timeout;
            let Ok(handshaking) = tls.handshakes.clone().try_acquire_owned() else {
                self.stats.tcp_refusal(HANDSHAKES_FULL);
                return;
            };
            let deadline = tokio::time::Instant::from_std(auth_deadline);
            let accepted =
                tokio::time::timeout_at(deadline, tls_stream::accept(stream, tls.config.clone()))
                    .await;
            drop(handshaking);
            let Ok(Ok(mut stream)) = accepted else {
                self.stats.tcp_refusal(TLS_HANDSHAKE);
                return;
            };
            let out = self.client_joined(tuple, Sink::Tls);
            let mut authenticated = false;
            let mut buf: Vec<u8> = Vec::new();
            let mut routes: Vec<(Range<usize>, Route)> = Vec::new();
            loop {
                let wait = read_wait(authenticated, auth_deadline);
                let mut closed = false;
                tokio::select! {
                    ready = tokio::time::timeout(wait, stream.readable()) => {
                        match ready {
                            Ok(Ok(())) => {}
                            Err(_) if !authenticated => {
                                self.stats.tcp_refusal(AUTH_TIMEOUT);
                                break;
                            }
                            _ => break,
                        }
                        match stream.read(&mut |plaintext| buf.extend_from_slice(plaintext)) {
                            Ok(ReadOutcome::Data | ReadOutcome::WouldBlock) => {}
                            Ok(ReadOutcome::Closed) | Err(_) => closed = true,
                        }
                        let (consumed, not_turn) = self.client_frames(
                            tuple,
                            origin,
                            &buf,
                            &mut routes,
                            &mut authenticated,
                        );
                        if not_turn {
                            break;
                        }
                        buf.drain(..consumed.min(buf.len()));
                        if buf.is_empty() && buf.capacity() > 4 * READ_SIZE {
                            buf = Vec::new();
                        }
                    }
                    () = out.more.notified() => {
                        let batch = std::mem::take(&mut *out.pending.lock_unpoisoned());
                        if !batch.is_empty() && stream.send(&batch).is_err() {
                            break;
                        }
                    }
                }
                // What this task's own frames produced (answers) is pending too.
                let batch = std::mem::take(&mut *out.pending.lock_unpoisoned());
                if !batch.is_empty() && stream.send(&batch).is_err() {
                    break;
                }
                if stream.flush(TLS_WRITE_TIMEOUT).await.is_err() || closed {
                    break;
                }
                // Its allocation is gone: what was pending is written, the connection ends.
                if out.is_closing() && out.pending.lock_unpoisoned().is_empty() {
                    break;
                }
                if !authenticated && clock::now() >= auth_deadline {
                    self.stats.tcp_refusal(AUTH_TIMEOUT);
                    break;
                }
            }
            self.client_gone(tuple);
            stream.shutdown(Duration::from_secs(1)).await;
            drop(held);
        })
    }
}
