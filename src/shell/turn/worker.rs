//! The relay's UDP datapath: a small fixed set of threads (`relay.workers`), each with its
//! own epoll set, serving the client-facing sockets (one per worker and address, the kernel
//! spreading clients over them with `SO_REUSEPORT`) and the relayed sockets sharded to it by
//! port. One level-triggered `epoll_wait` covers every socket that is ready; each is read
//! once (a batch on a client-facing socket, one datagram or GRO train on a relayed one: what
//! is left is reported by the next wait, so no read ends in `EAGAIN`), decided under the
//! core's read lock, and sent at once without waiting. No task, waker or scheduler hand-off
//! per packet; the receive buffers are the worker's, so an allocation costs its socket and a
//! table entry (issue 16: memory per allocation).
//!
//! Plain TURN-over-TCP clients are served here too (spread over the workers by the client's
//! port): edge-triggered, read until a short read drains the socket, written at their
//! EPOLLOUT edge when bytes are pending, closed at their deadline (a heap of deadlines, one
//! live entry per connection, rebuilt when closed ones outnumber the live ones; the wait
//! sleeps to the first).
//!
//! The control plane stays where it was: the relay opens and closes sockets (the core's
//! outputs) and hands them to their worker through a command queue and an eventfd. A socket
//! is deregistered before the worker lets go of it, so its descriptor is never closed while
//! registered.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use quinn_udp::RecvMeta;
use rustix::event::{epoll, eventfd, EventfdFlags};

use super::relay::{ClientScratch, Outbox};
use super::tcp::{TcpConn, TcpRead, TcpScratch};
use super::Turn;
use crate::core::turn::policy::Origin;
use crate::shell::clock;
use crate::shell::udp::{UdpPort, CLIENT_BATCH, MAX_DATAGRAM};
use crate::sync::MutexExt;

/// The ChannelData header written in front of a peer's datagram.
pub(super) const HEADER: usize = crate::core::turn::channel::HEADER_LEN;

/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// The token of a worker's own wake-up descriptor.
const WAKE: u64 = u64::MAX;

enum Command {
    /// A client-facing socket of this worker's.
    Listen(Arc<UdpPort>, Origin),
    /// A relayed socket.
    Add(Arc<UdpPort>),
    Remove(SocketAddr),
    /// A plain TURN-over-TCP client.
    Tcp(Box<TcpConn>),
    Stop,
}

/// One worker thread's handle: its commands and its wake-up.
struct Handle {
    commands: Mutex<Vec<Command>>,
    wake: OwnedFd,
}

impl Handle {
    fn send(&self, command: Command) {
        self.commands.lock_unpoisoned().push(command);
        // An eventfd write fails only when its counter would overflow: it is then readable
        // already, which is all a wake-up needs.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

/// The relay's worker threads. Dropping them stops them.
pub(super) struct Workers {
    handles: Vec<Arc<Handle>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Workers {
    /// Starts `count` workers (at least one) serving `turn`'s sockets. They hold the relay
    /// weakly: it owns them, and stops them with [`Workers::stop`].
    pub(super) fn start(count: usize, turn: Weak<Turn>) -> std::io::Result<Workers> {
        let mut handles = Vec::new();
        for i in 0..count.max(1) {
            let handle = Arc::new(Handle {
                commands: Mutex::new(Vec::new()),
                wake: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
            });
            let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            epoll::add(
                &epoll,
                &handle.wake,
                epoll::EventData::new_u64(WAKE),
                epoll::EventFlags::IN,
            )?;
            let worker = Worker {
                epoll,
                handle: handle.clone(),
                turn: turn.clone(),
                entries: HashMap::new(),
                tokens: HashMap::new(),
                next_token: 0,
                deadlines: BinaryHeap::new(),
                tcp_clients: 0,
                again: Vec::new(),
            };
            // Detached: a worker ends at its next wake-up once told to stop (or once the
            // relay is gone), holding nothing but its sockets.
            std::thread::Builder::new()
                .name(format!("edge-relay-{i}"))
                .spawn(move || {
                    super::stats::count_in(i + 1);
                    worker.run();
                })?;
            handles.push(handle);
        }
        Ok(Workers { handles })
    }

    /// No workers (a relay that failed to start).
    pub(super) fn none() -> Workers {
        Workers {
            handles: Vec::new(),
        }
    }

    /// The worker a relayed port belongs to.
    fn of(&self, relay: SocketAddr) -> Option<&Arc<Handle>> {
        let n = self.handles.len().max(1);
        self.handles.get(usize::from(relay.port()) % n)
    }

    /// Gives worker `i` a client-facing socket to serve.
    pub(super) fn listen(&self, i: usize, socket: Arc<UdpPort>, origin: Origin) {
        if let Some(h) = self.handles.get(i) {
            h.send(Command::Listen(socket, origin));
        }
    }

    /// Hands a relayed socket to its worker.
    pub(super) fn add(&self, socket: Arc<UdpPort>) {
        if let Some(h) = self.of(socket.local_addr()) {
            h.send(Command::Add(socket));
        }
    }

    /// Hands a plain TCP client to its worker; gives it back when there is none.
    pub(super) fn tcp(&self, conn: TcpConn) -> Result<(), Box<TcpConn>> {
        let n = self.handles.len().max(1);
        match self.handles.get(usize::from(conn.client_port()) % n) {
            Some(h) => {
                h.send(Command::Tcp(Box::new(conn)));
                Ok(())
            }
            None => Err(Box::new(conn)),
        }
    }

    /// Takes a relayed socket back from its worker (it is closed when the last holder lets
    /// go of it, after the worker has deregistered it).
    pub(super) fn remove(&self, relay: SocketAddr) {
        if let Some(h) = self.of(relay) {
            h.send(Command::Remove(relay));
        }
    }

    /// Tells every worker to stop, without waiting (this may run on an async task).
    pub(super) fn stop(&self) {
        for h in &self.handles {
            h.send(Command::Stop);
        }
    }
}

/// What a worker serves.
enum Entry {
    Client(Arc<UdpPort>, Origin),
    Relay(Arc<UdpPort>),
    Tcp(Box<TcpConn>),
}

impl Entry {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Entry::Client(p, _) | Entry::Relay(p) => Some(p.as_fd()),
            Entry::Tcp(conn) => conn.fd(),
        }
    }
}

/// A TCP client's epoll interest: edge-triggered reads and writes (a write is wanted only
/// after the socket refused bytes, which is exactly when its EPOLLOUT edge comes).
fn tcp_interest() -> epoll::EventFlags {
    epoll::EventFlags::IN
        | epoll::EventFlags::OUT
        | epoll::EventFlags::RDHUP
        | epoll::EventFlags::ET
}

/// One worker's state, owned by its thread.
struct Worker {
    epoll: OwnedFd,
    handle: Arc<Handle>,
    turn: Weak<Turn>,
    entries: HashMap<u64, Entry>,
    /// Relayed sockets by address (client-facing ones are never removed).
    tokens: HashMap<SocketAddr, u64>,
    next_token: u64,
    /// TCP clients' deadlines: one live entry per client (closed ones' entries are skipped
    /// when due, and dropped when they outnumber the live).
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    tcp_clients: usize,
    /// TCP clients not drained at the last wake-up: read again before sleeping.
    again: Vec<u64>,
}

impl Worker {
    fn run(mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS);
        // The worker's receive buffers, reused from wait to wait: a batch of client
        // datagrams (GRO trains included), and one peer datagram with room for the
        // ChannelData header in front.
        let mut client_storage = vec![0u8; CLIENT_BATCH * MAX_DATAGRAM];
        let mut client_bufs: Vec<IoSliceMut<'_>> = client_storage
            .chunks_mut(MAX_DATAGRAM)
            .map(IoSliceMut::new)
            .collect();
        let mut client_metas = vec![RecvMeta::default(); client_bufs.len()];
        let mut client_scratch = ClientScratch::default();
        let mut peer_storage = vec![0u8; HEADER + MAX_DATAGRAM];
        let mut scratch: Vec<u8> = Vec::with_capacity(256);
        let mut gather: Vec<u8> = Vec::new();
        let mut outbox = Outbox::default();
        let mut tcp_scratch = TcpScratch::default();
        let mut closing: Vec<u64> = Vec::new();
        let mut reread: Vec<u64> = Vec::new();
        loop {
            events.clear();
            let timeout = self.wait_timeout();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "relay worker: epoll_wait failed; the worker stops");
                    return;
                }
            }
            let Some(turn) = self.turn.upgrade() else {
                return;
            };
            for event in &events {
                let token = event.data.u64();
                if token == WAKE {
                    if !self.commands(&turn) {
                        self.close_all(&turn);
                        return;
                    }
                    continue;
                }
                let flags = event.flags;
                match self.entries.get_mut(&token) {
                    None => {} // removed in this round
                    Some(Entry::Client(port, origin)) => {
                        let Ok(n) = port.try_recv(&mut client_bufs, &mut client_metas) else {
                            continue; // nothing after all, or an ICMP error surfacing
                        };
                        turn.client_batch(
                            port.local_addr(),
                            *origin,
                            &client_bufs,
                            client_metas.get(..n).unwrap_or_default(),
                            &mut client_scratch,
                        );
                    }
                    Some(Entry::Relay(port)) => {
                        let mut meta = [RecvMeta::default()];
                        let received = {
                            let mut bufs = [IoSliceMut::new(
                                peer_storage.get_mut(HEADER..).unwrap_or_default(),
                            )];
                            port.try_recv(&mut bufs, &mut meta)
                        };
                        if !matches!(received, Ok(1)) {
                            continue;
                        }
                        let [meta] = meta;
                        turn.peer_datagram(
                            port.local_addr(),
                            &meta,
                            &mut peer_storage,
                            &mut scratch,
                            &mut gather,
                            &mut outbox,
                        );
                    }
                    Some(Entry::Tcp(conn)) => {
                        if flags.contains(epoll::EventFlags::OUT)
                            && conn.out().write_pending().is_err()
                        {
                            closing.push(token);
                            continue;
                        }
                        let read = epoll::EventFlags::IN
                            | epoll::EventFlags::RDHUP
                            | epoll::EventFlags::HUP
                            | epoll::EventFlags::ERR;
                        if flags.intersects(read) {
                            match turn.tcp_readable(conn, &mut tcp_scratch) {
                                TcpRead::Open => {}
                                TcpRead::More => self.again.push(token),
                                TcpRead::Close => closing.push(token),
                            }
                        }
                    }
                }
            }
            // TCP clients not drained yet (by this wake-up's reads or the last one's), after
            // everyone else had a turn.
            std::mem::swap(&mut reread, &mut self.again);
            for token in reread.drain(..) {
                if let Some(Entry::Tcp(conn)) = self.entries.get_mut(&token) {
                    match turn.tcp_readable(conn, &mut tcp_scratch) {
                        TcpRead::Open => {}
                        TcpRead::More => self.again.push(token),
                        TcpRead::Close => closing.push(token),
                    }
                }
            }
            self.due(&turn, &mut closing);
            for token in closing.drain(..) {
                self.close_tcp(token, &turn);
            }
            // What peers sent for clients in this wake-up, together.
            turn.flush_to_clients(&mut outbox);
        }
    }

    /// How long the next wait may sleep: not at all while a TCP client is left undrained,
    /// until the first TCP deadline, or for ever.
    fn wait_timeout(&self) -> Option<rustix::time::Timespec> {
        let sleep = if self.again.is_empty() {
            let Reverse((first, _)) = self.deadlines.peek()?;
            // A millisecond late rather than early: epoll_wait may round down, and an
            // early wake-up would spin until the deadline.
            first.saturating_duration_since(clock::now()) + Duration::from_millis(1)
        } else {
            Duration::ZERO
        };
        Some(rustix::time::Timespec {
            tv_sec: i64::try_from(sleep.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(sleep.subsec_nanos()),
        })
    }

    /// TCP clients whose deadline came: closed, or their next deadline set.
    fn due(&mut self, turn: &Turn, closing: &mut Vec<u64>) {
        let now = clock::now();
        while let Some(&Reverse((at, token))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(Entry::Tcp(conn)) = self.entries.get(&token) else {
                continue; // closed since
            };
            match turn.tcp_due(conn, now) {
                Some(next) => self.deadlines.push(Reverse((next, token))),
                None => closing.push(token),
            }
        }
    }

    /// Closes a TCP client: out of the epoll set, then its allocation and connection go.
    fn close_tcp(&mut self, token: u64, turn: &Turn) {
        let Some(Entry::Tcp(conn)) = self.entries.remove(&token) else {
            return;
        };
        if let Some(fd) = conn.fd() {
            let _ = epoll::delete(&self.epoll, fd);
        }
        self.tcp_clients = self.tcp_clients.saturating_sub(1);
        turn.tcp_closed(*conn);
        // Closed clients' deadlines are skipped when due; they may not pile up meanwhile
        // (a client that comes and goes would leave one an hour).
        if self.deadlines.len() > 2 * self.tcp_clients + 64 {
            let entries = &self.entries;
            self.deadlines
                .retain(|Reverse((_, token))| matches!(entries.get(token), Some(Entry::Tcp(_))));
        }
    }

    /// Closes every TCP client (the worker stops).
    fn close_all(&mut self, turn: &Turn) {
        let tokens: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Tcp(_)))
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            self.close_tcp(token, turn);
        }
    }

    /// Carries out the queued commands; `false` when told to stop.
    fn commands(&mut self, turn: &Turn) -> bool {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.handle.wake, &mut counter);
        let commands: Vec<Command> = std::mem::take(&mut *self.handle.commands.lock_unpoisoned());
        for command in commands {
            let entry = match command {
                Command::Listen(port, origin) => Entry::Client(port, origin),
                Command::Add(port) => Entry::Relay(port),
                Command::Tcp(conn) => Entry::Tcp(conn),
                Command::Remove(relay) => {
                    if let Some(token) = self.tokens.remove(&relay) {
                        self.forget(token);
                    }
                    continue;
                }
                Command::Stop => return false,
            };
            let token = self.next_token;
            self.next_token += 1;
            let interest = match entry {
                Entry::Tcp(_) => tcp_interest(),
                _ => epoll::EventFlags::IN,
            };
            let added = match entry.fd() {
                Some(fd) => epoll::add(&self.epoll, fd, epoll::EventData::new_u64(token), interest),
                None => Err(rustix::io::Errno::BADF),
            };
            if let Err(e) = added {
                tracing::warn!(error = %e, "relay worker: cannot watch a socket");
                if let Entry::Tcp(conn) = entry {
                    turn.tcp_closed(*conn);
                }
                continue;
            }
            match &entry {
                Entry::Relay(port) => {
                    if let Some(old) = self.tokens.insert(port.local_addr(), token) {
                        self.forget(old);
                    }
                }
                Entry::Tcp(conn) => {
                    self.deadlines.push(Reverse((conn.deadline(), token)));
                    self.tcp_clients += 1;
                }
                Entry::Client(..) => {}
            }
            self.entries.insert(token, entry);
        }
        true
    }

    fn forget(&mut self, token: u64) {
        if let Some(entry) = self.entries.remove(&token) {
            if let Some(fd) = entry.fd() {
                let _ = epoll::delete(&self.epoll, fd);
            }
        }
    }
}
