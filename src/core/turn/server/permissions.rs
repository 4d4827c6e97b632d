//! CreatePermission and ChannelBind (RFC 8656 §9, §12): which peers an allocation may
//! exchange data with, and the channel numbers bound to them, within the peer policy and
//! the per-allocation caps. Expired entries are pruned here, when the allocation is next
//! touched.

use std::net::SocketAddr;
use std::time::Instant;

use super::{
    decode_xor_address, sha256, value, Allocation, OnAllocation, Server, CHANNEL_BIND,
    CREATE_PERMISSION, SOFTWARE_ATTR,
};
use crate::core::turn::channel::{CHANNEL_MAX, CHANNEL_MIN};
use crate::core::turn::encode::{Writer, SOFTWARE};
use crate::core::turn::error::{BadRequest, Refused};
use crate::core::turn::stun::{attr, Checked, Class};

impl Server {
    /// Every XOR-PEER-ADDRESS of a request (CreatePermission may carry several).
    fn peers(&self, packet: &[u8], c: &Checked) -> Result<Vec<SocketAddr>, Refused> {
        let mut peers = Vec::new();
        for a in c
            .attributes()
            .iter()
            .filter(|a| a.kind == attr::XOR_PEER_ADDRESS)
        {
            let v = packet
                .get(a.start..a.start + a.len)
                .ok_or(Refused::BadRequest(BadRequest::BadPeerAddress))?;
            peers.push(
                decode_xor_address(v, &c.transaction_id)
                    .ok_or(Refused::BadRequest(BadRequest::BadPeerAddress))?,
            );
        }
        if peers.is_empty() {
            return Err(Refused::BadRequest(BadRequest::MissingPeerAddress));
        }
        Ok(peers)
    }

    /// Whether the allocation `on` names may exchange data with `peers`: of its relay's
    /// address family, and allowed by the peer policy for where its client is. A permission
    /// names addresses only (the relay's own pass: another allocation; what is sent there
    /// is held to the relayed ports per packet); a channel names a port too.
    fn check_peers(
        &mut self,
        on: OnAllocation<'_>,
        peers: &[SocketAddr],
        with_port: bool,
    ) -> Result<(), Refused> {
        let a = self.owned(on.tuple, on.username)?;
        let (relay, origin) = (a.relay, a.origin);
        for peer in peers {
            if peer.is_ipv6() != relay.is_ipv6() {
                return Err(Refused::PeerAddressFamilyMismatch);
            }
            let policy = &self.cfg.policy;
            let verdict = if with_port {
                policy.check_addr(*peer, origin)
            } else {
                policy.check_permission(peer.ip(), origin)
            };
            verdict.map_err(|_| Refused::Forbidden)?;
        }
        Ok(())
    }

    pub(super) fn create_permission(&mut self, on: OnAllocation<'_>) -> Result<Vec<u8>, Refused> {
        let peers = self.peers(on.packet, on.c)?;
        self.check_peers(on, &peers, false)?;
        let expires = on.now + self.cfg.permission_lifetime;
        let max = self.cfg.max_permissions_per_allocation;
        let a = self.owned(on.tuple, on.username)?;
        prune(a, on.now);
        let new = peers
            .iter()
            .filter(|p| !a.permissions.contains_key(&p.ip()))
            .map(|p| p.ip())
            .collect::<std::collections::HashSet<_>>()
            .len();
        if a.permissions.len() + new > max {
            return Err(Refused::InsufficientCapacity);
        }
        for peer in peers {
            a.permissions.insert(peer.ip(), expires);
        }
        Ok(signed_success(CREATE_PERMISSION, on.c, &a.key))
    }

    pub(super) fn channel_bind(&mut self, on: OnAllocation<'_>) -> Result<Vec<u8>, Refused> {
        let number = value(on.packet, on.c, attr::CHANNEL_NUMBER)
            .and_then(|v| v.first_chunk::<2>())
            .map(|b| u16::from_be_bytes(*b))
            .filter(|n| (CHANNEL_MIN..=CHANNEL_MAX).contains(n))
            .ok_or(Refused::BadRequest(BadRequest::BadChannelNumber))?;
        let peers = self.peers(on.packet, on.c)?;
        let [peer] = peers.as_slice() else {
            return Err(Refused::BadRequest(BadRequest::OnePeerAddress));
        };
        let peer = *peer;
        if peer.port() == 0 {
            return Err(Refused::BadRequest(BadRequest::BadPeerPort));
        }
        self.check_peers(on, &[peer], true)?;
        let channel_lifetime = self.cfg.channel_lifetime;
        let permission_lifetime = self.cfg.permission_lifetime;
        let (max_channels, max_permissions) = (
            self.cfg.max_channels_per_allocation,
            self.cfg.max_permissions_per_allocation,
        );
        let a = self.owned(on.tuple, on.username)?;
        prune(a, on.now);
        // RFC 8656 §12.2: a channel is bound to one peer and a peer to one channel.
        if let Some((bound, _)) = a.channels.get(&number) {
            if *bound != peer {
                return Err(Refused::BadRequest(BadRequest::ChannelBoundToAnotherPeer));
            }
        }
        if a.channels
            .iter()
            .any(|(n, (p, _))| *p == peer && *n != number)
        {
            return Err(Refused::BadRequest(BadRequest::PeerBoundToAnotherChannel));
        }
        let new_channel = !a.channels.contains_key(&number);
        let new_permission = !a.permissions.contains_key(&peer.ip());
        if (new_channel && a.channels.len() >= max_channels)
            || (new_permission && a.permissions.len() >= max_permissions)
        {
            return Err(Refused::InsufficientCapacity);
        }
        a.channels.insert(number, (peer, on.now + channel_lifetime));
        a.permissions
            .insert(peer.ip(), on.now + permission_lifetime);
        Ok(signed_success(CHANNEL_BIND, on.c, &a.key))
    }
}

/// The success answer of `method`, which carries nothing but its signature.
fn signed_success(method: u16, c: &Checked, key: &[u8; 16]) -> Vec<u8> {
    let mut w = Writer::new(Class::Success, method, c.transaction_id);
    w.attr(SOFTWARE_ATTR, SOFTWARE.as_bytes())
        .sign(key, sha256(c));
    w.finish_with_fingerprint()
}

/// Drops an allocation's expired permissions and channels (bounded by its caps).
fn prune(a: &mut Allocation, now: Instant) {
    a.permissions.retain(|_, e| *e > now);
    a.channels.retain(|_, (_, e)| *e > now);
}
