//! TURN over TCP (RFC 8656 §12.5): the accept loop behind the firewall's per-source
//! limits and a slot per zone, and each client's connection: frames read off the stream,
//! answers and relayed data queued for its writer (bounded in packets and bytes), an
//! authentication deadline, and its allocation closed with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::stats::{AUTH_TIMEOUT, BANNED, QUEUE_FULL, SOURCE_LIMIT, ZONE_FULL};
use super::Turn;
use crate::core::firewall::SourceGuard;
use crate::core::turn::policy::Origin;
use crate::core::turn::server::{Arrival, FiveTuple, Transport};
use crate::shell::clock;
use crate::sync::MutexExt;

/// Packets queued for a TCP client before further ones are dropped (bytes are bounded
/// apart, by [`TcpLimits::max_queued_bytes`]).
const TCP_QUEUE: usize = 512;
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

/// The sending end of a TURN-over-TCP client's queue: bounded in packets by the channel
/// and in bytes by a counter the writer gives back.
#[derive(Clone)]
pub(super) struct TcpQueue {
    tx: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl TcpQueue {
    fn try_send(&self, bytes: Vec<u8>) -> bool {
        let len = bytes.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > self.max_bytes {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        if self.tx.try_send(bytes).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// One TURN-over-TCP connection's place in its source's count, released on drop.
struct SourceTicket {
    guard: Arc<SourceGuard>,
    ip: std::net::IpAddr,
}

impl Drop for SourceTicket {
    fn drop(&mut self) {
        self.guard.disconnected(self.ip, clock::now());
    }
}

impl Turn {
    /// Queues bytes for a TCP client; a client that does not read loses packets, not the
    /// relay's memory.
    pub(super) fn to_tcp_client(&self, tuple: &FiveTuple, bytes: Vec<u8>) {
        let tx = self.tcp_clients.lock_unpoisoned().get(tuple).cloned();
        let len = bytes.len();
        if tx.is_some_and(|tx| tx.try_send(bytes)) {
            self.stats.relayed(false, 1, len);
        } else {
            self.stats.count_drop(QUEUE_FULL);
        }
    }

    pub(super) async fn tcp_accept_loop(self: Arc<Self>, listener: TcpListener, origin: Origin) {
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
                    Ok(()) => Some(SourceTicket {
                        guard: self.guard.clone(),
                        ip: client.ip(),
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
            // Media: each frame goes out as it comes, not held back for the client's next
            // acknowledgement (Nagle's algorithm cost 2.6 ms per packet at 400 pps).
            let _ = stream.set_nodelay(true);
            let tuple = FiveTuple {
                client,
                server,
                transport: Transport::Tcp,
            };
            let this = self.clone();
            let task = this.tcp_client(stream, tuple, origin, (slot, ticket));
            self.tasks.lock_unpoisoned().spawn(task);
        }
    }

    /// One TURN-over-TCP client: STUN and ChannelData framed on the stream (RFC 8656 §12.5);
    /// its allocation ends with the connection. Until it holds an allocation it has
    /// `auth_timeout`, then it is closed: nobody holds a slot without authenticating.
    fn tcp_client(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        tuple: FiveTuple,
        origin: Origin,
        held: (tokio::sync::OwnedSemaphorePermit, Option<SourceTicket>),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.stats.tcp_clients.fetch_add(1, Ordering::Relaxed);
            let (mut reader, mut writer) = stream.into_split();
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
            let queued = Arc::new(AtomicUsize::new(0));
            self.tcp_clients.lock_unpoisoned().insert(
                tuple,
                TcpQueue {
                    tx,
                    queued: queued.clone(),
                    max_bytes: self.tcp_limits.max_queued_bytes,
                },
            );
            let write = tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    let len = bytes.len();
                    let ok = writer.write_all(&bytes).await.is_ok();
                    queued.fetch_sub(len, Ordering::Relaxed);
                    if !ok {
                        return;
                    }
                }
            });
            let auth_deadline = clock::now() + self.tcp_limits.auth_timeout;
            let mut authenticated = false;
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            let mut chunk = vec![0u8; 16 * 1024];
            'read: loop {
                let wait = if authenticated {
                    TCP_IDLE
                } else {
                    auth_deadline.saturating_duration_since(clock::now())
                };
                let n = match tokio::time::timeout(wait, reader.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => n,
                    Err(_) if !authenticated => {
                        self.stats.tcp_refusal(AUTH_TIMEOUT);
                        break;
                    }
                    _ => break,
                };
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                loop {
                    match crate::core::turn::channel::stream_frame_len(
                        &buf,
                        crate::core::turn::stun::MAX_MESSAGE,
                    ) {
                        Ok(Some(len)) => {
                            let frame: Vec<u8> = buf.drain(..len).collect();
                            self.stats.client_packets.fetch_add(1, Ordering::Relaxed);
                            let arrival = Arrival {
                                tuple,
                                origin,
                                now: clock::now(),
                                now_unix: clock::now_unix(),
                            };
                            // A relayed port another process holds costs the answer (the
                            // allocation is dropped): a UDP client retransmits, a TCP
                            // client does not, so the edge asks again for it (another port).
                            for _attempt in 0..3 {
                                let mut out = Vec::new();
                                let result = self.client_control(arrival, &frame, &mut out);
                                if let Err(why) = result {
                                    self.dropped(why, tuple.client, origin, Transport::Tcp);
                                }
                                if !self.execute(out).contains(&tuple.client) {
                                    break;
                                }
                            }
                            authenticated =
                                authenticated || self.read_server().has_allocation(&tuple);
                        }
                        Ok(None) => break,
                        Err(_) => break 'read, // not TURN: close
                    }
                }
                if !authenticated && clock::now() >= auth_deadline {
                    self.stats.tcp_refusal(AUTH_TIMEOUT);
                    break;
                }
            }
            self.tcp_clients.lock_unpoisoned().remove(&tuple);
            let mut out = Vec::new();
            self.lock_server().client_closed(tuple, &mut out);
            self.execute(out);
            write.abort();
            self.stats.tcp_clients.fetch_sub(1, Ordering::Relaxed);
            drop(held);
        })
    }
}
