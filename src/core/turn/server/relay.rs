//! The relay's hot path: where a client's Send indication or ChannelData goes, and what a
//! peer's datagram becomes for the client (ChannelData or a Data indication), each charged
//! to the allocation's and its user's bandwidth budgets. Read-only on the server and
//! allocation-free, so the shell can run it under a shared lock for every packet.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{
    decode_xor_address, Allocation, Dropped, FiveTuple, Output, Server, Transport, DATA, SEND,
};
use crate::core::turn::bandwidth::Direction;
use crate::core::turn::channel;
use crate::core::turn::encode::Writer;
use crate::core::turn::stun::{attr, Checked, Class};

/// Where a relayed packet goes (the hot path's answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    /// The bytes of the client's packet to send: the ChannelData payload.
    pub data: std::ops::Range<usize>,
}

impl Route {
    /// The general path's form of a route: the bytes copied into an output.
    fn output(self, packet: &[u8]) -> Output {
        Output::ToPeer {
            relay: self.relay,
            peer: self.peer,
            bytes: packet.get(self.data).unwrap_or_default().to_vec(),
        }
    }
}

/// What goes to the client in front of (or instead of) a peer's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToClient {
    /// This ChannelData header, then the data (padded to 4 on a stream).
    Channel([u8; channel::HEADER_LEN]),
    /// The Data indication written into the caller's scratch buffer.
    Indication,
}

impl Server {
    pub(super) fn send_indication(
        &mut self,
        tuple: FiveTuple,
        packet: &[u8],
        c: &Checked,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), Dropped> {
        let route = self.send_to_peer(&tuple, packet, c, now)?;
        out.push(route.output(packet));
        Ok(())
    }

    /// The hot path for a Send indication (read-only, allocation-free; `c` is its strict
    /// check): where its DATA goes, and which bytes of `packet` they are.
    pub fn send_to_peer(
        &self,
        tuple: &FiveTuple,
        packet: &[u8],
        c: &Checked,
        now: Instant,
    ) -> Result<Route, Dropped> {
        if c.class != Class::Indication || c.method != SEND {
            return Err(Dropped::Ignored);
        }
        // RFC 8489 §7.3.2: an indication with an unknown comprehension-required attribute
        // (DONT-FRAGMENT among them: the relay does not set DF per packet) is discarded.
        if !c.unknown_required().is_empty() {
            return Err(Dropped::UnknownAttribute);
        }
        let a = self.allocations.get(tuple).ok_or(Dropped::NoAllocation)?;
        let mut peers = c
            .attributes()
            .iter()
            .filter(|a| a.kind == attr::XOR_PEER_ADDRESS);
        let (Some(peer), None) = (peers.next(), peers.next()) else {
            return Err(Dropped::MalformedStun);
        };
        let peer = packet
            .get(peer.start..peer.start + peer.len)
            .and_then(|v| decode_xor_address(v, &c.transaction_id))
            .ok_or(Dropped::MalformedStun)?;
        let data = c.get(attr::DATA).ok_or(Dropped::MalformedStun)?;
        if peer.port() == 0 {
            return Err(Dropped::BadPeer);
        }
        if !permitted(a, peer.ip(), now) {
            return Err(Dropped::NoPermission);
        }
        // A permission for the relay's own address is for another allocation: its relayed
        // ports, never the edge's listeners on that address.
        if !self.cfg.policy.may_send_to(peer) {
            return Err(Dropped::BadPeer);
        }
        self.charge(a, Direction::ToPeer, data.len, now)?;
        Ok(Route {
            relay: a.relay,
            peer,
            data: data.start..data.start + data.len,
        })
    }

    pub(super) fn client_channel_data(
        &mut self,
        tuple: FiveTuple,
        packet: &[u8],
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), Dropped> {
        let route = self.channel_to_peer(&tuple, packet, now)?;
        out.push(route.output(packet));
        Ok(())
    }

    /// The hot path, client to peer (read-only, allocation-free): where a client's
    /// ChannelData goes, and which bytes of `packet` to send.
    pub fn channel_to_peer(
        &self,
        tuple: &FiveTuple,
        packet: &[u8],
        now: Instant,
    ) -> Result<Route, Dropped> {
        let m = channel::parse(packet, tuple.transport == Transport::Tcp)
            .map_err(|_| Dropped::MalformedChannelData)?;
        let a = self.allocations.get(tuple).ok_or(Dropped::NoAllocation)?;
        let (peer, expires) = a.channels.get(&m.channel).ok_or(Dropped::UnboundChannel)?;
        if *expires <= now {
            return Err(Dropped::UnboundChannel);
        }
        if !permitted(a, peer.ip(), now) {
            return Err(Dropped::NoPermission);
        }
        self.charge(a, Direction::ToPeer, m.data.len(), now)?;
        Ok(Route {
            relay: a.relay,
            peer: *peer,
            data: channel::HEADER_LEN..channel::HEADER_LEN + m.data.len(),
        })
    }

    /// The hot path, peer to client (read-only, allocation-free): what to send the client
    /// for `data` from `peer` arriving on `relay`. With a channel bound to the peer, the
    /// ChannelData header to put in front of the data (and, to a TCP client, padding to 4);
    /// otherwise a Data indication, written into `scratch` (its allocation reused).
    pub fn peer_to_client(
        &self,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
        scratch: &mut Vec<u8>,
    ) -> Result<(FiveTuple, ToClient), Dropped> {
        let tuple = *self.by_relay.get(&relay).ok_or(Dropped::NoAllocation)?;
        let a = self.allocations.get(&tuple).ok_or(Dropped::NoAllocation)?;
        if !permitted(a, peer.ip(), now) {
            return Err(Dropped::NoPermission);
        }
        let len = u16::try_from(data.len()).map_err(|_| Dropped::Ignored)?;
        self.charge(a, Direction::ToClient, data.len(), now)?;
        // At most `max_channels_per_allocation` entries, nearly always one or two: a scan
        // costs less than hashing the peer's address.
        let bound = a
            .channels
            .iter()
            .find(|(_, (p, e))| *p == peer && *e > now)
            .map(|(n, _)| *n);
        if let Some(number) = bound {
            let mut header = [0u8; channel::HEADER_LEN];
            channel::write_header(&mut header, number, len);
            return Ok((tuple, ToClient::Channel(header)));
        }
        // A Data indication: a fresh transaction id per indication (RFC 8656 §11.4).
        let seq = self.data_seq.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 12];
        for (d, s) in id.iter_mut().zip(
            seq.to_be_bytes()
                .iter()
                .chain(relay.port().to_be_bytes().iter()),
        ) {
            *d = *s;
        }
        let mut w = Writer::reuse(std::mem::take(scratch), Class::Indication, DATA, id);
        w.xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data);
        *scratch = w.finish();
        Ok((tuple, ToClient::Indication))
    }

    /// A datagram from `peer` to the relayed address `relay`, as bytes for the client
    /// (ChannelData, padded on TCP, or a Data indication); dropped without a permission.
    /// The allocating form of [`Server::peer_to_client`].
    pub fn peer_packet(
        &self,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Result<Output, Dropped> {
        let mut scratch = Vec::new();
        let (tuple, framing) = self.peer_to_client(relay, peer, data, now, &mut scratch)?;
        let bytes = match framing {
            ToClient::Channel(header) => {
                channel::framed(&header, data, tuple.transport == Transport::Tcp)
            }
            ToClient::Indication => scratch,
        };
        Ok(Output::ToClient { tuple, bytes })
    }

    /// Charges a relayed packet to the allocation's budget, then to its user's. A packet the
    /// user's budget refuses has still used the allocation's: a conservative count, and
    /// one atomic operation each on the hot path.
    fn charge(
        &self,
        a: &Allocation,
        direction: Direction,
        bytes: usize,
        now: Instant,
    ) -> Result<(), Dropped> {
        let ok = a
            .meters
            .get(direction)
            .charge(self.cfg.bandwidth_per_allocation, bytes, now)
            && a.user_meters.get(direction).charge(
                a.user_meters.budget(self.cfg.bandwidth_per_user),
                bytes,
                now,
            );
        if ok {
            Ok(())
        } else {
            Err(Dropped::OverBandwidth)
        }
    }
}

fn permitted(a: &Allocation, peer: IpAddr, now: Instant) -> bool {
    a.permissions
        .get(&peer)
        .is_some_and(|&expires| expires > now)
}
