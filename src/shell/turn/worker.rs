//! The relayed sockets' datapath: a small fixed set of threads (`relay.workers`), each with
//! its own epoll set, serving the relayed sockets sharded to it by port. What a peer sends
//! goes to its client from here, synchronously: one level-triggered `epoll_wait` for every
//! socket that is ready, one read per ready socket (what is left is reported again by the
//! next wait, so no read ends in `EAGAIN`), the core's read-locked decision, one send. No
//! task, waker or scheduler hand-off per packet; and the receive buffer is the worker's, not
//! each socket's, so an allocation costs its socket and a table entry (issue 16:
//! memory per allocation).
//!
//! The control plane stays where it was: the relay opens and closes sockets (the core's
//! outputs) and hands them to their worker through a command queue and an eventfd. A socket
//! is deregistered before the worker lets go of it, so its descriptor is never closed while
//! registered.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use rustix::event::{epoll, eventfd, EventfdFlags};

use super::Turn;
use crate::shell::udp::MAX_DATAGRAM;
use crate::sync::MutexExt;

/// The ChannelData header written in front of a peer's datagram.
pub(super) const HEADER: usize = crate::core::turn::channel::HEADER_LEN;

/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// The token of a worker's own wake-up descriptor.
const WAKE: u64 = u64::MAX;

/// A relayed UDP socket: read by its worker, written by whoever relays to a peer.
pub(super) struct RelaySocket {
    relay: SocketAddr,
    io: std::net::UdpSocket,
    state: UdpSocketState,
}

impl RelaySocket {
    /// Binds a relayed socket on `relay` (non-blocking; IPv6 only when the address is).
    pub(super) fn bind(relay: SocketAddr) -> io::Result<RelaySocket> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(relay),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if relay.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&relay.into())?;
        let io: std::net::UdpSocket = socket.into();
        let state = UdpSocketState::new((&io).into())?;
        // As for the client-facing sockets: no DF unless the client asks (RFC 8656 §14).
        if relay.is_ipv4() {
            use rustix::net::sockopt::{set_ip_mtu_discover, Ipv4PathMtuDiscovery};
            set_ip_mtu_discover(&io, Ipv4PathMtuDiscovery::WANT)?;
        }
        Ok(RelaySocket { relay, io, state })
    }

    /// How many datagrams one send may carry as segments (1 without GSO).
    pub(super) fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends `contents` to `peer` (GSO segments of `segment` bytes if given) without
    /// waiting: a full socket buffer is an error, and the packet is dropped (late media is
    /// no use, and a queue would be memory a peer controls).
    pub(super) fn try_send(
        &self,
        peer: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: peer,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        self.state.try_send((&self.io).into(), &transmit)
    }

    fn try_recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        self.state.recv((&self.io).into(), bufs, meta)
    }
}

enum Command {
    Add(Arc<RelaySocket>),
    Remove(SocketAddr),
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
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Workers {
    /// Starts `count` workers (at least one) serving `turn`'s relayed sockets. They hold
    /// the relay weakly: it owns them, and stops them with [`Workers::stop`].
    pub(super) fn start(count: usize, turn: Weak<Turn>) -> io::Result<Workers> {
        let mut handles = Vec::new();
        let mut threads = Vec::new();
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
                sockets: HashMap::new(),
                tokens: HashMap::new(),
                next_token: 0,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("edge-relay-{i}"))
                    .spawn(move || worker.run())?,
            );
            handles.push(handle);
        }
        Ok(Workers {
            handles,
            threads: Mutex::new(threads),
        })
    }

    /// The worker a relayed port belongs to.
    fn of(&self, relay: SocketAddr) -> Option<&Arc<Handle>> {
        let n = self.handles.len().max(1);
        self.handles.get(usize::from(relay.port()) % n)
    }

    /// Hands a relayed socket to its worker.
    pub(super) fn add(&self, socket: Arc<RelaySocket>) {
        if let Some(h) = self.of(socket.relay) {
            h.send(Command::Add(socket));
        }
    }

    /// Takes a relayed socket back from its worker (it is closed when the last holder lets
    /// go of it, after the worker has deregistered it).
    pub(super) fn remove(&self, relay: SocketAddr) {
        if let Some(h) = self.of(relay) {
            h.send(Command::Remove(relay));
        }
    }

    /// Tells every worker to stop (without waiting: this may run on an async task; a
    /// worker stops at its next wake-up, which this is).
    pub(super) fn stop(&self) {
        for h in &self.handles {
            h.send(Command::Stop);
        }
        // Detached: each thread ends by itself, holding nothing but its sockets.
        self.threads.lock_unpoisoned().clear();
    }

    /// No workers (a relay that failed to start).
    pub(super) fn none() -> Workers {
        Workers {
            handles: Vec::new(),
            threads: Mutex::new(Vec::new()),
        }
    }
}

/// One worker's state, owned by its thread.
struct Worker {
    epoll: OwnedFd,
    handle: Arc<Handle>,
    turn: Weak<Turn>,
    sockets: HashMap<u64, Arc<RelaySocket>>,
    tokens: HashMap<SocketAddr, u64>,
    next_token: u64,
}

impl Worker {
    fn run(mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS);
        // The worker's one receive buffer: room for a GRO train, the header in front.
        let mut storage = vec![0u8; HEADER + MAX_DATAGRAM];
        let mut scratch: Vec<u8> = Vec::with_capacity(256);
        let mut gather: Vec<u8> = Vec::new();
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
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
                    if !self.commands() {
                        return;
                    }
                    continue;
                }
                let Some(socket) = self.sockets.get(&token) else {
                    continue; // removed in this round
                };
                let mut meta = [RecvMeta::default()];
                let received = {
                    let mut bufs = [IoSliceMut::new(
                        storage.get_mut(HEADER..).unwrap_or_default(),
                    )];
                    socket.try_recv(&mut bufs, &mut meta)
                };
                if !matches!(received, Ok(1)) {
                    continue; // nothing after all, or an ICMP error surfacing
                }
                let [meta] = meta;
                turn.peer_datagram(socket.relay, &meta, &mut storage, &mut scratch, &mut gather);
            }
        }
    }

    /// Carries out the queued commands; `false` when told to stop.
    fn commands(&mut self) -> bool {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.handle.wake, &mut counter);
        let commands: Vec<Command> = std::mem::take(&mut *self.handle.commands.lock_unpoisoned());
        for command in commands {
            match command {
                Command::Add(socket) => {
                    let token = self.next_token;
                    self.next_token += 1;
                    let added = epoll::add(
                        &self.epoll,
                        socket.io.as_fd(),
                        epoll::EventData::new_u64(token),
                        epoll::EventFlags::IN,
                    );
                    match added {
                        Ok(()) => {
                            if let Some(old) = self.tokens.insert(socket.relay, token) {
                                self.forget(old);
                            }
                            self.sockets.insert(token, socket);
                        }
                        Err(e) => {
                            tracing::warn!(relay = %socket.relay, error = %e, "relay worker: cannot watch a relayed socket");
                        }
                    }
                }
                Command::Remove(relay) => {
                    if let Some(token) = self.tokens.remove(&relay) {
                        self.forget(token);
                    }
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn forget(&mut self, token: u64) {
        if let Some(socket) = self.sockets.remove(&token) {
            let _ = epoll::delete(&self.epoll, socket.io.as_fd());
        }
    }
}
