//! The Access Edge's counters (exported on `/metrics`, live): forwarded messages, rejects
//! by reason and side, firewall refusals.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::core::firewall::Refusal;
use crate::core::sip::proxy::Side;
use crate::core::sip::Why;

/// The row of responses in [`Stats::by_method`].
pub const RESPONSES: usize = crate::core::sip::message::Method::ALL.len();

/// Counters (exported by the operations work; read by tests now).
pub struct Stats {
    pub forwarded_from_external: AtomicU64,
    pub forwarded_from_internal: AtomicU64,
    pub rejected_external: AtomicU64,
    pub rejected_internal: AtomicU64,
    /// Rejects by reason ([`Why::index`]) and zone (0 external, 1 internal).
    pub rejects_by_reason: Vec<[AtomicU64; 2]>,
    pub dropped_responses: AtomicU64,
    pub connections_accepted: AtomicU64,
    /// Connections closed at accept: the listener's connection or handshake budget is spent.
    pub connections_refused: AtomicU64,
    /// Connections and requests refused by per-source limits, by [`Refusal::label`].
    pub source_refusals: [AtomicU64; 4],
    /// Connections closed because their source got banned (bans: `SourceGuard::bans_total`).
    pub banned_closes: AtomicU64,
    pub handshakes_failed: AtomicU64,
    /// Relay credentials issued by the A/V authentication service, and requests refused.
    pub credentials_issued: AtomicU64,
    pub credentials_refused: AtomicU64,
    /// Forwarded messages by method (the last row: responses) and zone of origin.
    pub by_method: [[AtomicU64; 2]; RESPONSES + 1],
    /// The external listener's accepts fail for lack of descriptors (the open-file limit):
    /// `/healthz` answers 503 until its next retry, so a load balancer sends new remote
    /// users to another member instead of into a backlog nobody accepts from.
    pub external_out_of_descriptors: AtomicBool,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            forwarded_from_external: AtomicU64::new(0),
            forwarded_from_internal: AtomicU64::new(0),
            rejected_external: AtomicU64::new(0),
            rejected_internal: AtomicU64::new(0),
            rejects_by_reason: Why::LABELS.iter().map(|_| Default::default()).collect(),
            dropped_responses: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            source_refusals: Default::default(),
            banned_closes: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            credentials_issued: AtomicU64::new(0),
            credentials_refused: AtomicU64::new(0),
            by_method: Default::default(),
            external_out_of_descriptors: AtomicBool::new(false),
        }
    }
}

/// The order of [`Stats::source_refusals`].
pub const REFUSAL_LABELS: [&str; 4] = [
    "banned",
    "connect_rate",
    "connections_per_source",
    "request_rate",
];

impl Stats {
    pub fn forwarded(&self, from: Side) {
        match from {
            Side::External => &self.forwarded_from_external,
            Side::Internal => &self.forwarded_from_internal,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A message forwarded, counted by zone and by method (responses apart).
    pub fn forwarded_message(&self, from: Side, msg: &crate::core::sip::message::Message) {
        self.forwarded(from);
        let row = msg.method().map_or(RESPONSES, |m| m.index());
        let column = match from {
            Side::External => 0,
            Side::Internal => 1,
        };
        if let Some(c) = self.by_method.get(row).and_then(|r| r.get(column)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn reject(&self, why: Why, from: Side) {
        let zone = match from {
            Side::External => {
                self.rejected_external.fetch_add(1, Ordering::Relaxed);
                0
            }
            Side::Internal => {
                self.rejected_internal.fetch_add(1, Ordering::Relaxed);
                1
            }
        };
        if let Some(by_zone) = self
            .rejects_by_reason
            .get(why.index())
            .and_then(|z| z.get(zone))
        {
            by_zone.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rejects of `label` from `side` so far.
    pub fn rejects(&self, label: &str, side: Side) -> u64 {
        let zone = usize::from(side == Side::Internal);
        Why::LABELS
            .iter()
            .position(|l| *l == label)
            .and_then(|i| self.rejects_by_reason.get(i))
            .and_then(|z| z.get(zone))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn refused(&self, refusal: Refusal) {
        let i = REFUSAL_LABELS
            .iter()
            .position(|l| *l == refusal.label())
            .unwrap_or(0);
        if let Some(c) = self.source_refusals.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn refusals(&self, label: &str) -> u64 {
        REFUSAL_LABELS
            .iter()
            .position(|l| *l == label)
            .and_then(|i| self.source_refusals.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn dropped_response(&self) {
        self.dropped_responses.fetch_add(1, Ordering::Relaxed);
    }
}
