//! The server's invariants: every table agrees with every other and with the configured
//! bounds. Checked by the unit tests and the fuzz targets after every step; O(held), so
//! never on the packet path.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::Server;
use crate::core::net::SourceKey;

impl Server {
    /// Every table agrees with every other and with the bounds: for tests and the fuzz
    /// targets after each step (O(held): never on the packet path).
    pub fn check_invariants(&self) -> Result<(), String> {
        let cfg = &self.cfg;
        let fail = |what: String| Err(what);
        // Asks waiting for the pool hold too, without a port yet.
        let asked: usize = self.asks.waiting().map(|r| r.holds()).sum();
        if self.held != self.allocations.len() + self.reservations.len() + asked {
            return fail(format!(
                "held {} != {} allocations + {} reservations + {asked} asked",
                self.held,
                self.allocations.len(),
                self.reservations.len()
            ));
        }
        if self.held > cfg.max_allocations {
            return fail(format!("held {} > max {}", self.held, cfg.max_allocations));
        }
        if self.ports.taken() + asked != self.held {
            return fail(format!(
                "{} ports taken, {} held",
                self.ports.taken(),
                self.held
            ));
        }
        if self.by_id.len() != self.allocations.len()
            || self.by_relay.len() != self.allocations.len()
            || self.deadlines.len() != self.allocations.len()
        {
            return fail("allocation indexes disagree".into());
        }
        let mut per_user: HashMap<&str, usize> = HashMap::new();
        let mut per_source: HashMap<SourceKey, usize> = HashMap::new();
        for (tuple, a) in &self.allocations {
            if self.by_id.get(&a.id) != Some(tuple)
                || self.by_relay.get(&a.relay) != Some(tuple)
                || !self.deadlines.contains(&(a.expires, a.id))
                || self.ports.is_free(a.relay.port())
            {
                return fail(format!("allocation {} not indexed", a.id));
            }
            if a.permissions.len() > cfg.max_permissions_per_allocation
                || a.channels.len() > cfg.max_channels_per_allocation
            {
                return fail(format!("allocation {} over its caps", a.id));
            }
            // RFC 8656 §12.2: one peer, one channel.
            let mut peers: Vec<SocketAddr> = a.channels.values().map(|(p, _)| *p).collect();
            peers.sort_unstable();
            peers.dedup();
            if peers.len() != a.channels.len() {
                return fail(format!("allocation {} binds a peer twice", a.id));
            }
            if let Some(port) = a.reservation {
                if self.reservations.get(&port).map(|r| r.owner) != Some(a.id) {
                    return fail(format!("allocation {} lost its reservation", a.id));
                }
            }
            *per_user.entry(&a.user).or_default() += 1;
            *per_source.entry(a.source).or_default() += 1;
        }
        if self.reservation_tokens.len() != self.reservations.len() {
            return fail("reservation tokens disagree".into());
        }
        for (port, r) in &self.reservations {
            let owner = self
                .by_id
                .get(&r.owner)
                .and_then(|t| self.allocations.get(t));
            if owner.and_then(|a| a.reservation) != Some(*port)
                || self.reservation_tokens.get(&r.token) != Some(port)
                || self.ports.is_free(*port)
                || !self
                    .reservation_queue
                    .iter()
                    .any(|(t, p)| p == port && *t == r.expires)
            {
                return fail(format!("reservation of port {port} not indexed"));
            }
            *per_user.entry(&r.user).or_default() += 1;
            *per_source.entry(r.source).or_default() += 1;
        }
        // What waits for the pool holds already.
        if self.asks.waiting().count() > super::MAX_ASKS {
            return fail("too many asks wait for the pool".into());
        }
        if !self.asks.queues_agree() {
            return fail("the asks' queues disagree with the asks waiting".into());
        }
        for r in self.asks.waiting() {
            if !self.asks.is_waiting(&r.tuple) || self.allocations.contains_key(&r.tuple) {
                return fail("an ask waits on a 5-tuple not indexed, or allocated".into());
            }
            *per_user.entry(&r.user).or_default() += r.holds();
            *per_source.entry(r.source).or_default() += r.holds();
        }
        // Compacted on every push past 2 x live + 64: never past 2 x the most that can be
        // held + 64, whatever the churn.
        if self.reservation_queue.len() > 2 * cfg.max_allocations + 65 {
            return fail(format!(
                "reservation queue of {} past its bound ({} live)",
                self.reservation_queue.len(),
                self.reservations.len()
            ));
        }
        let users: HashMap<&str, usize> =
            self.per_user.iter().map(|(u, s)| (&**u, s.holds)).collect();
        if users != per_user || per_source != self.per_source {
            return fail("per-user or per-source counts disagree".into());
        }
        if per_user.values().any(|&n| n > cfg.max_allocations_per_user)
            || per_source
                .values()
                .any(|&n| n > cfg.max_allocations_per_source)
        {
            return fail("a quota is exceeded".into());
        }
        Ok(())
    }
}
