//! The flow table: which connection a flow id names, for routing responses and requests
//! back. Sharded so that no lock is shared by every message: a lookup takes the read lock
//! of one of 64 shards for the time of a hash-map probe.
//!
//! Each flow's queue is bounded twice: in messages (the channel) and in bytes (a counter
//! shared by sender and receiver), so a peer that stops reading holds at most
//! `limits.max_queued_bytes` of the edge's memory however large the messages are.

use crate::sync::RwLockExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::core::sip::proxy::Side;
use crate::core::sip::token::FlowId;

const SHARDS: usize = 64;

/// How to reach a connection's writer.
#[derive(Clone, Debug)]
pub struct FlowHandle {
    pub side: Side,
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

/// The receiving end of a flow's queue (owned by the connection's task).
pub struct FlowReceiver {
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
}

/// A new flow queue: at most `messages` messages and `max_bytes` bytes waiting.
pub fn queue(side: Side, messages: usize, max_bytes: usize) -> (FlowHandle, FlowReceiver) {
    let (tx, rx) = mpsc::channel(messages);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        FlowHandle {
            side,
            tx,
            queued: queued.clone(),
            max_queued: max_bytes,
        },
        FlowReceiver { rx, queued },
    )
}

impl FlowReceiver {
    pub async fn recv(&mut self) -> Option<Bytes> {
        let bytes = self.rx.recv().await?;
        self.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
        Some(bytes)
    }

    pub fn try_recv(&mut self) -> Option<Bytes> {
        let bytes = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
        Some(bytes)
    }
}

impl FlowHandle {
    fn try_send(&self, bytes: Bytes) -> Result<(), SendError> {
        let len = bytes.len();
        // Reserve the bytes first; give them back if the queue refuses the message.
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) > self.max_queued {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return Err(SendError::Full);
        }
        self.tx.try_send(bytes).map_err(|e| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::Gone,
            }
        })
    }
}

/// Why a send to a flow failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No such flow: the connection is gone (430 Flow Failed for requests).
    Gone,
    /// The connection's queue is full (messages or bytes): its peer does not read. The
    /// message is dropped rather than buffered without bound.
    Full,
    /// The flow is in the sender's own zone: no legitimate route does that.
    SameZone,
}

/// All live flows of this edge instance.
pub struct FlowTable {
    shards: Vec<RwLock<HashMap<FlowId, FlowHandle>>>,
}

impl Default for FlowTable {
    fn default() -> Self {
        FlowTable {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
}

impl FlowTable {
    fn shard(&self, id: FlowId) -> Option<&RwLock<HashMap<FlowId, FlowHandle>>> {
        // Flow ids are sequential: the low bits spread them evenly.
        self.shards.get((id.0 % SHARDS as u64) as usize)
    }

    pub fn insert(&self, id: FlowId, handle: FlowHandle) {
        if let Some(shard) = self.shard(id) {
            // A poisoned shard only means another task panicked mid-insert; the map itself
            // is still consistent (HashMap operations do not unwind half-way).
            shard.write_unpoisoned().insert(id, handle);
        }
    }

    pub fn remove(&self, id: FlowId) {
        if let Some(shard) = self.shard(id) {
            shard.write_unpoisoned().remove(&id);
        }
    }

    /// Queues bytes on a flow without waiting.
    pub fn send(&self, id: FlowId, bytes: Bytes) -> Result<(), SendError> {
        let shard = self.shard(id).ok_or(SendError::Gone)?;
        let map = shard.read_unpoisoned();
        let handle = map.get(&id).ok_or(SendError::Gone)?;
        // try_send never waits, so holding the read lock across it is cheap.
        handle.try_send(bytes)
    }

    /// Queues bytes from a connection in zone `from` on a flow of the other zone.
    pub fn send_across(&self, id: FlowId, from: Side, bytes: Bytes) -> Result<(), SendError> {
        let shard = self.shard(id).ok_or(SendError::Gone)?;
        let map = shard.read_unpoisoned();
        let handle = map.get(&id).ok_or(SendError::Gone)?;
        if handle.side == from {
            return Err(SendError::SameZone);
        }
        handle.try_send(bytes)
    }

    /// Connections by zone: (external, internal).
    pub fn count_by_side(&self) -> (usize, usize) {
        let mut external = 0;
        let mut internal = 0;
        for shard in &self.shards {
            for handle in shard.read_unpoisoned().values() {
                match handle.side {
                    Side::External => external += 1,
                    Side::Internal => internal += 1,
                }
            }
        }
        (external, internal)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read_unpoisoned().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_in_bytes_and_frees_what_is_read() {
        let table = FlowTable::default();
        let (handle, mut rx) = queue(Side::External, 100, 1000);
        table.insert(FlowId(7), handle);
        let msg = Bytes::from(vec![b'x'; 400]);
        assert_eq!(
            table.send_across(FlowId(7), Side::Internal, msg.clone()),
            Ok(())
        );
        assert_eq!(
            table.send_across(FlowId(7), Side::Internal, msg.clone()),
            Ok(())
        );
        assert_eq!(
            table.send_across(FlowId(7), Side::Internal, msg.clone()),
            Err(SendError::Full)
        );
        assert_eq!(
            table.send_across(FlowId(7), Side::External, msg.clone()),
            Err(SendError::SameZone)
        );
        assert_eq!(
            table.send_across(FlowId(8), Side::Internal, msg.clone()),
            Err(SendError::Gone)
        );
        assert!(rx.try_recv().is_some());
        assert_eq!(table.send_across(FlowId(7), Side::Internal, msg), Ok(()));
    }
}
