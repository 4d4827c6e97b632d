//! The UDP paths of the relay, as the workers run them: client-facing batches, their relay-path
//! packets (ChannelData, Send indications) routed under one read lock and sent to peers
//! straight from the receive buffers (equal-sized runs as one GSO send), the rest through
//! the general path; and what the relay workers read from peers, framed for the client in
//! place (GRO trains out as one GSO send).

use quinn_udp::RecvMeta;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::ops::Range;

use super::Turn;
use crate::core::turn::channel;
use crate::core::turn::demux::{classify, PacketKind};
use crate::core::turn::policy::Origin;
use crate::core::turn::server::{Arrival, Dropped, FiveTuple, Route, ToClient, Transport, SEND};
use crate::core::turn::stun::{self, Class};
use crate::shell::clock;
use crate::shell::udp::{self, MAX_DATAGRAM, SEND_BATCH};

use super::worker::HEADER;

/// Datagrams for clients gathered during one wake-up of a relay worker, sent together at
/// its end (`sendmmsg`, one call per client-facing socket): copies of the frames, back to
/// back, and where each goes. The room is kept from wake-up to wake-up.
#[derive(Default)]
pub(super) struct Outbox {
    bytes: Vec<u8>,
    /// Client-facing address, client, the frame in `bytes`, its payload length.
    items: Vec<(SocketAddr, SocketAddr, Range<usize>, usize)>,
}

/// Room an outbox keeps between wake-ups (a batch of audio or video frames; a batch of
/// 64 KiB datagrams is given back after it is sent).
const OUTBOX_KEPT: usize = 64 * 1024;

/// Zeros to pad a ChannelData frame on a stream to a multiple of 4 (RFC 8656 §12.5).
const PADDING: [u8; 3] = [0; 3];

/// A run of relayed payloads with one destination and one size, gathered for one GSO send.
struct Run {
    relay: SocketAddr,
    peer: SocketAddr,
    size: usize,
    count: usize,
}

/// What a worker keeps from batch to batch for its client-facing sockets: the relay path
/// allocates nothing per packet.
#[derive(Default)]
pub(super) struct ClientScratch {
    datagrams: Vec<(usize, Range<usize>)>,
    routes: Vec<(usize, Route)>,
    gather: Vec<u8>,
}

impl Turn {
    /// A batch read from a client-facing UDP socket (`metas[i]` describes `bufs[i]`; GRO
    /// trains are split). A run of relay-path packets (ChannelData, Send indications) is
    /// routed under one read lock and sent straight from the receive buffers, equal-sized
    /// payloads to one peer gathered into one GSO send; anything else takes the general
    /// path in arrival order.
    pub(super) fn client_batch(
        &self,
        local: SocketAddr,
        origin: Origin,
        bufs: &[IoSliceMut<'_>],
        metas: &[RecvMeta],
        s: &mut ClientScratch,
    ) {
        let hot = self.stats.hot();
        hot.receive_call();
        s.datagrams.clear();
        for (i, (buf, meta)) in bufs.iter().zip(metas).enumerate() {
            s.datagrams
                .extend(udp::datagrams(buf, meta).map(|r| (i, r)));
        }
        hot.client_packets(s.datagrams.len());
        let mut next = 0;
        while next < s.datagrams.len() {
            // Route the relay-path packets up to the next other one, under one read lock.
            s.routes.clear();
            {
                let server = self.read_server();
                let now = clock::now();
                while let Some((i, r)) = s.datagrams.get(next) {
                    let (Some(buf), Some(meta)) = (bufs.get(*i), metas.get(*i)) else {
                        break;
                    };
                    let packet = buf.get(r.clone()).unwrap_or_default();
                    let tuple = FiveTuple {
                        client: meta.addr,
                        server: local,
                        transport: Transport::Udp,
                    };
                    let routed = match classify(packet) {
                        PacketKind::ChannelData => server.channel_to_peer(&tuple, packet, now),
                        PacketKind::Stun => match stun::check(packet) {
                            Ok(c) if c.class == Class::Indication && c.method == SEND => {
                                server.send_to_peer(&tuple, packet, &c, now)
                            }
                            _ => break,
                        },
                        _ => break,
                    };
                    match routed {
                        Ok(mut route) => {
                            route.data = route.data.start + r.start..route.data.end + r.start;
                            s.routes.push((*i, route));
                        }
                        Err(why) => self.stats.drop(why),
                    }
                    next += 1;
                }
            }
            self.send_to_peers(bufs, &s.routes, &mut s.gather);
            // The general path for the packet that stopped the run.
            if let Some((i, r)) = s.datagrams.get(next) {
                let (Some(buf), Some(meta)) = (bufs.get(*i), metas.get(*i)) else {
                    break;
                };
                let packet = buf.get(r.clone()).unwrap_or_default();
                let arrival = Arrival {
                    tuple: FiveTuple {
                        client: meta.addr,
                        server: local,
                        transport: Transport::Udp,
                    },
                    origin,
                    now: clock::now(),
                    now_unix: clock::now_unix(),
                };
                let mut out = Vec::new();
                let result = self.client_control(arrival, packet, &mut out);
                if let Err(why) = result {
                    self.dropped(why, meta.addr, origin, Transport::Udp);
                }
                self.execute(out);
                next += 1;
            }
        }
    }

    /// Sends routed payloads to their peers, without waiting (a full socket buffer drops
    /// the packet): a run of equal-sized payloads to one peer as one GSO send (gathered),
    /// anything else straight from the receive buffer.
    fn send_to_peers(
        &self,
        bufs: &[IoSliceMut<'_>],
        routes: &[(usize, Route)],
        gather: &mut Vec<u8>,
    ) {
        let payload = |(i, route): &(usize, Route)| -> &[u8] {
            bufs.get(*i)
                .and_then(|b| b.get(route.data.clone()))
                .unwrap_or_default()
        };
        let mut k = 0;
        while let Some(first) = routes.get(k) {
            let (_, head) = first;
            let Some(sock) = self.relay_socket(head.relay) else {
                self.stats.drop(Dropped::NoAllocation);
                k += 1;
                continue;
            };
            let mut run = Run {
                relay: head.relay,
                peer: head.peer,
                size: head.data.len(),
                count: 1,
            };
            let limit = sock.max_segments().min(MAX_DATAGRAM / run.size.max(1));
            while run.count < limit
                && routes.get(k + run.count).is_some_and(|(_, r)| {
                    r.relay == run.relay && r.peer == run.peer && r.data.len() == run.size
                })
            {
                run.count += 1;
            }
            let bytes = run.size * run.count;
            let sent = if run.count == 1 {
                sock.try_send(run.peer, payload(first), None)
            } else {
                gather.clear();
                for r in routes.iter().skip(k).take(run.count) {
                    gather.extend_from_slice(payload(r));
                }
                sock.try_send(run.peer, gather, Some(run.size))
            };
            self.stats.sent(sent, true, run.count, bytes);
            k += run.count;
        }
    }

    /// A datagram (or GRO train) a relay worker read from a peer on `relay`, at
    /// `storage[HEADER..HEADER + meta.len]`, to its client.
    pub(super) fn peer_datagram(
        &self,
        relay: SocketAddr,
        meta: &RecvMeta,
        storage: &mut [u8],
        scratch: &mut Vec<u8>,
        gather: &mut Vec<u8>,
        outbox: &mut Outbox,
    ) {
        let hot = self.stats.hot();
        hot.receive_call();
        let body = storage.get(HEADER..).unwrap_or_default();
        let segments = udp::datagrams(body, meta).count();
        hot.peer_packets(segments);
        if segments == 1 {
            self.one_to_client(relay, meta.addr, meta.len, storage, scratch, outbox);
        } else {
            self.train_to_client(relay, meta.addr, storage, meta, scratch, gather);
        }
    }

    /// One datagram from a peer (at `storage[HEADER..HEADER + len]`) to its client: over
    /// UDP into the outbox, over TCP written at once.
    fn one_to_client(
        &self,
        relay: SocketAddr,
        peer: SocketAddr,
        len: usize,
        storage: &mut [u8],
        scratch: &mut Vec<u8>,
        outbox: &mut Outbox,
    ) {
        let data = storage.get(HEADER..HEADER + len).unwrap_or_default();
        let decided = self
            .read_server()
            .peer_to_client(relay, peer, data, clock::now(), scratch);
        let (tuple, framing) = match decided {
            Ok(d) => d,
            Err(why) => return self.stats.drop(why),
        };
        let frame: &[u8] = match framing {
            ToClient::Channel(header) if tuple.transport == Transport::Udp => {
                if let Some(head) = storage.get_mut(..HEADER) {
                    head.copy_from_slice(&header);
                }
                storage.get(..HEADER + len).unwrap_or_default()
            }
            ToClient::Channel(header) => {
                // TCP: header, data and padding to 4, queued for the client's writer.
                let pad = PADDING
                    .get(..channel::stream_padding(len))
                    .unwrap_or_default();
                return self.to_tcp_client(&tuple, &[&header, data, pad]);
            }
            ToClient::Indication if tuple.transport == Transport::Tcp => {
                return self.to_tcp_client(&tuple, &[scratch]);
            }
            ToClient::Indication => scratch,
        };
        if outbox.items.len() >= SEND_BATCH {
            self.flush_to_clients(outbox);
        }
        let start = outbox.bytes.len();
        outbox.bytes.extend_from_slice(frame);
        outbox
            .items
            .push((tuple.server, tuple.client, start..outbox.bytes.len(), len));
    }

    /// Sends what the outbox holds, a `sendmmsg` per run of datagrams from one
    /// client-facing address, and empties it (keeping its room).
    pub(super) fn flush_to_clients(&self, outbox: &mut Outbox) {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut i = 0;
        while let Some(&(server, ..)) = outbox.items.get(i) {
            let run = outbox
                .items
                .iter()
                .skip(i)
                .take(SEND_BATCH)
                .take_while(|item| item.0 == server)
                .count()
                .max(1);
            let items = outbox.items.get(i..i + run).unwrap_or_default();
            let datagrams: [(SocketAddr, &[u8]); SEND_BATCH] = std::array::from_fn(|k| {
                items
                    .get(k)
                    .map_or((unspecified, &[][..]), |(_, client, frame, _)| {
                        (*client, outbox.bytes.get(frame.clone()).unwrap_or_default())
                    })
            });
            if let Some(sock) = self.listeners.get(&server) {
                let sent = sock.send_many(datagrams.get(..run).unwrap_or_default());
                let bytes = items.iter().take(sent).map(|item| item.3).sum();
                self.stats.relayed(false, sent, bytes);
                self.stats.unsent(run - sent);
            }
            i += run;
        }
        outbox.items.clear();
        outbox.bytes.clear();
        // A burst of large datagrams does not leave its room held for good.
        if outbox.bytes.capacity() > OUTBOX_KEPT {
            outbox.bytes = Vec::new();
        }
    }

    /// A GRO train from one peer (equal-sized datagrams, the last maybe shorter) to its
    /// client: each framed into `gather`, sent as one GSO send when every one went on a
    /// channel to a UDP client, one by one otherwise.
    fn train_to_client(
        &self,
        relay: SocketAddr,
        peer: SocketAddr,
        storage: &[u8],
        meta: &RecvMeta,
        scratch: &mut Vec<u8>,
        gather: &mut Vec<u8>,
    ) {
        let body = storage.get(HEADER..).unwrap_or_default();
        gather.clear();
        let mut target: Option<FiveTuple> = None;
        let mut count = 0;
        let mut bytes = 0;
        for r in udp::datagrams(body, meta) {
            let data = body.get(r).unwrap_or_default();
            let decided =
                self.read_server()
                    .peer_to_client(relay, peer, data, clock::now(), scratch);
            match decided {
                Err(why) => self.stats.drop(why),
                Ok((tuple, ToClient::Channel(header))) if tuple.transport == Transport::Udp => {
                    gather.extend_from_slice(&header);
                    gather.extend_from_slice(data);
                    target = Some(tuple);
                    count += 1;
                    bytes += data.len();
                }
                Ok((tuple, ToClient::Channel(header))) => {
                    let pad = PADDING
                        .get(..channel::stream_padding(data.len()))
                        .unwrap_or_default();
                    self.to_tcp_client(&tuple, &[&header, data, pad]);
                }
                Ok((tuple, ToClient::Indication)) => {
                    if tuple.transport == Transport::Tcp {
                        self.to_tcp_client(&tuple, &[scratch]);
                    } else if let Some(sock) = self.listeners.get(&tuple.server) {
                        let sent = sock.try_send(tuple.client, scratch, None);
                        self.stats.sent(sent, false, 1, data.len());
                    }
                }
            }
        }
        let Some(tuple) = target else { return };
        let Some(sock) = self.listeners.get(&tuple.server) else {
            return;
        };
        // Equal segments but maybe the last: GSO takes exactly that shape. A train with a
        // drop in the middle is still equal-sized, as every framed datagram but the last
        // has the stride's size.
        let segment = HEADER + meta.stride.max(1);
        let sent = if count > 1 && count <= sock.max_segments() {
            sock.try_send(tuple.client, gather, Some(segment))
        } else {
            let mut result = Ok(());
            for frame in gather.chunks(segment) {
                result = result.and(sock.try_send(tuple.client, frame, None));
            }
            result
        };
        self.stats.sent(sent, false, count, bytes);
    }
}
