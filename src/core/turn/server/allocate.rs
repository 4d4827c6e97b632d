//! Allocate and Refresh (RFC 8656 §7, §8): a new allocation's checks (transport, address
//! families, EVEN-PORT and RESERVATION-TOKEN), its port, quota and lifetime, the
//! reservation of the next port with the R bit, and the lifetime a Refresh extends or
//! ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    secs32, sha256, user_of, value, Allocation, FiveTuple, OnAllocation, Output, Reservation,
    Server, ALLOCATE, REFRESH, RESERVATION_LIFETIME, SOFTWARE_ATTR, UDP,
};
use crate::core::net::SourceKey;
use crate::core::turn::bandwidth::Meters;
use crate::core::turn::encode::{Writer, SOFTWARE};
use crate::core::turn::error::{BadRequest, Refused};
use crate::core::turn::policy::Origin;
use crate::core::turn::stun::{attr, Checked, Class};

/// An Allocate that passed its checks, as far as it needs to be carried out: what
/// [`Server::grant`] needs now, or once the pool has answered (it may wait in
/// [`super::pool_ask`] meanwhile, holding no port).
pub(super) struct AllocateRequest {
    pub(super) tuple: FiveTuple,
    pub(super) origin: Origin,
    pub(super) transaction_id: [u8; 12],
    /// The answer carries MESSAGE-INTEGRITY-SHA256 (the request did).
    pub(super) sha256: bool,
    pub(super) username: String,
    pub(super) user: Arc<str>,
    pub(super) source: SourceKey,
    pub(super) key: [u8; 16],
    pub(super) even_port: bool,
    pub(super) reserve_next: bool,
    pub(super) token: Option<[u8; 8]>,
    /// The family of ADDITIONAL-ADDRESS-FAMILY not granted (answered with 440 inside).
    pub(super) additional_refused: Option<u8>,
    pub(super) lifetime: Duration,
}

impl AllocateRequest {
    /// The holds it adds: the allocation, and the reservation of the next port.
    pub(super) fn holds(&self) -> usize {
        1 + usize::from(self.reserve_next)
    }
}

impl Server {
    /// An Allocate: checked, then granted now, or, in a pool that counts quotas pool-wide,
    /// once the pool has answered (`Ok(None)`: the answer comes later).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn allocate(
        &mut self,
        tuple: FiveTuple,
        origin: Origin,
        packet: &[u8],
        c: &Checked,
        username: String,
        key: [u8; 16],
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<Option<Vec<u8>>, Refused> {
        if self.allocations.contains_key(&tuple) {
            return Err(Refused::AllocationMismatch);
        }
        let transport = value(packet, c, attr::REQUESTED_TRANSPORT)
            .ok_or(Refused::BadRequest(BadRequest::MissingRequestedTransport))?;
        if transport.first() != Some(&UDP) {
            return Err(Refused::UnsupportedTransportProtocol);
        }
        let token = value(packet, c, attr::RESERVATION_TOKEN);
        if token.is_some() && c.get(attr::EVEN_PORT).is_some() {
            // RFC 8656 §7.2: the two attributes exclude each other.
            return Err(Refused::BadRequest(
                BadRequest::EvenPortWithReservationToken,
            ));
        }
        let token = token
            .map(|t| {
                <[u8; 8]>::try_from(t)
                    .map_err(|_| Refused::BadRequest(BadRequest::BadReservationToken))
            })
            .transpose()?;
        // RFC 8656 §7.2: REQUESTED- and ADDITIONAL-ADDRESS-FAMILY exclude each other; an
        // additional IPv6 relay is not offered (single-family relays): the IPv4 allocation
        // succeeds with ADDRESS-ERROR-CODE 440 for the family not granted.
        let additional = value(packet, c, attr::ADDITIONAL_ADDRESS_FAMILY);
        if additional.is_some() && c.get(attr::REQUESTED_ADDRESS_FAMILY).is_some() {
            return Err(Refused::BadRequest(BadRequest::BothAddressFamilyAttributes));
        }
        let additional_refused = match additional.and_then(|v| v.first().copied()) {
            None => None,
            Some(0x02) => Some(0x02u8),
            Some(_) => return Err(Refused::BadRequest(BadRequest::BadAdditionalAddressFamily)),
        };
        if let Some(family) = value(packet, c, attr::REQUESTED_ADDRESS_FAMILY) {
            let wanted_v6 = match family.first() {
                Some(0x01) => false,
                Some(0x02) => true,
                _ => return Err(Refused::BadRequest(BadRequest::BadRequestedAddressFamily)),
            };
            if wanted_v6 != self.cfg.relay_ip.is_ipv6() {
                return Err(Refused::AddressFamilyNotSupported);
            }
        }
        let even_port = value(packet, c, attr::EVEN_PORT);
        let request = AllocateRequest {
            tuple,
            origin,
            transaction_id: c.transaction_id,
            sha256: sha256(c),
            user: Arc::from(user_of(&username)),
            username,
            source: SourceKey::of(tuple.client.ip()),
            key,
            even_port: even_port.is_some(),
            reserve_next: even_port
                .and_then(|v| v.first())
                .is_some_and(|b| b & 0x80 != 0),
            token,
            additional_refused,
            lifetime: self.lifetime(packet, c),
        };
        // A new hold in a pool that counts quotas pool-wide: checked here first, then
        // asked of the pool (a claimed reservation was counted when it was made).
        if request.token.is_none() && self.asks_pool() {
            self.quota(&request.user, request.source, request.holds())?;
            self.ask_pool(request, now, out)?;
            return Ok(None);
        }
        self.grant(request, now, out).map(Some)
    }

    /// Carries out a checked Allocate: its quota, its port (or the reserved one its token
    /// claims), the reservation of the next port, the answer.
    pub(super) fn grant(
        &mut self,
        request: AllocateRequest,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<Vec<u8>, Refused> {
        let AllocateRequest {
            tuple,
            origin,
            transaction_id,
            sha256,
            username,
            user,
            source,
            key,
            even_port,
            reserve_next,
            token,
            additional_refused,
            lifetime,
        } = request;
        if self.allocations.contains_key(&tuple) {
            return Err(Refused::AllocationMismatch);
        }
        // RFC 8656 §7.2: a token claims a port reserved by an earlier EVEN-PORT with the R
        // bit (the RTCP port next to an RTP relay). Its reservation ends here, whoever
        // claims it; the new allocation is charged like any other.
        let port = match token {
            Some(token) => {
                let port = self
                    .reservation_tokens
                    .get(&token)
                    .copied()
                    .filter(|p| self.reservations.get(p).is_some_and(|r| r.expires > now))
                    .ok_or(Refused::InsufficientCapacity)?;
                self.quota(&user, source, 1)
                    .or_else(|e| self.quota_after_claim(port, &user, source).ok_or(e))?;
                self.end_reservation(port, false);
                port
            }
            None => {
                self.quota(&user, source, 1 + usize::from(reserve_next))?;
                self.ports
                    .take(even_port, reserve_next)
                    .ok_or(Refused::InsufficientCapacity)?
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let reserved_token = if reserve_next {
            let token = self.new_token();
            let reserved = port + 1;
            self.charge_hold(&user, source, now);
            self.reservations.insert(
                reserved,
                Reservation {
                    token,
                    owner: id,
                    user: user.clone(),
                    source,
                    expires: now + RESERVATION_LIFETIME,
                },
            );
            self.reservation_tokens.insert(token, reserved);
            self.reservation_queue
                .push_back((now + RESERVATION_LIFETIME, reserved));
            // Claimed and ended reservations linger in the queue until their deadline:
            // keep it within a constant factor of the live ones whatever the churn
            // (amortised O(1): a compaction follows at least as many pushes as it keeps).
            if self.reservation_queue.len() > 2 * self.reservations.len() + 64 {
                let live = &self.reservations;
                // One entry per live reservation: a port reserved again at the same instant
                // leaves entries identical to the live one's.
                let mut kept = std::collections::HashSet::new();
                self.reservation_queue.retain(|(t, p)| {
                    live.get(p).is_some_and(|r| r.expires == *t) && kept.insert(*p)
                });
            }
            Some(token)
        } else {
            None
        };
        let relay = SocketAddr::new(self.cfg.relay_ip, port);
        let mut w = Writer::new(Class::Success, ALLOCATE, transaction_id);
        w.xor_address(
            attr::XOR_RELAYED_ADDRESS,
            SocketAddr::new(self.cfg.advertised_ip, port),
        )
        .attr(attr::LIFETIME, &secs32(lifetime))
        .xor_address(attr::XOR_MAPPED_ADDRESS, tuple.client);
        if let Some(token) = reserved_token {
            w.attr(attr::RESERVATION_TOKEN, &token);
        }
        if let Some(family) = additional_refused {
            // family, reserved, class 4, number 40, reason (RFC 8656 §18.12).
            let mut v = vec![family, 0, 4, 40];
            v.extend_from_slice(b"Address Family not Supported");
            w.attr(attr::ADDRESS_ERROR_CODE, &v);
        }
        w.attr(SOFTWARE_ATTR, SOFTWARE.as_bytes())
            .sign(&key, sha256);
        let answer = w.finish_with_fingerprint();
        let user_meters = self.charge_hold(&user, source, now);
        self.by_relay.insert(relay, tuple);
        self.by_id.insert(id, tuple);
        let expires = now + lifetime;
        self.deadlines.insert((expires, id));
        self.allocations.insert(
            tuple,
            Allocation {
                id,
                origin,
                username,
                user,
                source,
                key,
                relay,
                expires,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                allocate_tx: (transaction_id, answer.clone()),
                meters: Meters::new(now),
                user_meters,
                reservation: reserved_token.map(|_| port + 1),
            },
        );
        out.push(Output::OpenRelay {
            relay,
            allocation: id,
        });
        Ok(answer)
    }

    /// When the quota refused a claim: it passes if the reservation being claimed is the
    /// claimant's own hold (the reservation is given up for the allocation, one for one).
    fn quota_after_claim(&self, port: u16, user: &str, source: SourceKey) -> Option<()> {
        let r = self.reservations.get(&port)?;
        (&*r.user == user && r.source == source).then_some(())
    }

    /// The lifetime asked for, clamped (RFC 8656 §7.2: at least the default, at most the max).
    fn lifetime(&self, packet: &[u8], c: &Checked) -> Duration {
        let asked = value(packet, c, attr::LIFETIME)
            .and_then(|v| v.first_chunk::<4>())
            .map(|b| Duration::from_secs(u64::from(u32::from_be_bytes(*b))));
        asked
            .unwrap_or(self.cfg.default_lifetime)
            .clamp(self.cfg.default_lifetime, self.cfg.max_lifetime)
    }

    pub(super) fn refresh(
        &mut self,
        on: OnAllocation<'_>,
        out: &mut Vec<Output>,
    ) -> Result<Vec<u8>, Refused> {
        let asked = value(on.packet, on.c, attr::LIFETIME)
            .and_then(|v| v.first_chunk::<4>())
            .map(|b| u32::from_be_bytes(*b));
        let lifetime = if asked == Some(0) {
            Duration::ZERO
        } else {
            self.lifetime(on.packet, on.c)
        };
        let a = self.owned(on.tuple, on.username)?;
        let key = a.key;
        if lifetime.is_zero() {
            self.remove(on.tuple, out);
        } else {
            let (old, id) = (a.expires, a.id);
            a.expires = on.now + lifetime;
            self.deadlines.remove(&(old, id));
            self.deadlines.insert((on.now + lifetime, id));
        }
        let mut w = Writer::new(Class::Success, REFRESH, on.c.transaction_id);
        w.attr(attr::LIFETIME, &secs32(lifetime))
            .attr(SOFTWARE_ATTR, SOFTWARE.as_bytes())
            .sign(&key, sha256(on.c));
        Ok(w.finish_with_fingerprint())
    }

    /// An unguessable reservation token (a keyed hash of a counter).
    fn new_token(&mut self) -> [u8; 8] {
        use std::hash::BuildHasher;
        let seq = self.data_seq.fetch_add(1, Ordering::Relaxed);
        self.token_hasher.hash_one(seq).to_be_bytes()
    }
}
