//! The flow table: which connection a flow id names, for routing responses and requests
//! back. Sharded so that no lock is shared by every message: a lookup takes the read lock
//! of one of 64 shards for the time of a hash-map probe.

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::core::sip::proxy::Side;
use crate::core::sip::token::FlowId;

const SHARDS: usize = 64;

/// How to reach a connection's writer.
#[derive(Clone, Debug)]
pub struct FlowHandle {
    pub side: Side,
    pub tx: mpsc::Sender<Bytes>,
}

/// Why a send to a flow failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No such flow: the connection is gone (430 Flow Failed for requests).
    Gone,
    /// The connection's queue is full: its peer does not read. The message is dropped
    /// rather than buffered without bound.
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
            shard
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, handle);
        }
    }

    pub fn remove(&self, id: FlowId) {
        if let Some(shard) = self.shard(id) {
            shard.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    }

    /// Queues bytes on a flow without waiting.
    pub fn send(&self, id: FlowId, bytes: Bytes) -> Result<(), SendError> {
        let shard = self.shard(id).ok_or(SendError::Gone)?;
        let map = shard.read().unwrap_or_else(|e| e.into_inner());
        let handle = map.get(&id).ok_or(SendError::Gone)?;
        // try_send never waits, so holding the read lock across it is cheap.
        handle.tx.try_send(bytes).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Gone,
        })
    }

    /// Queues bytes from a connection in zone `from` on a flow of the other zone.
    pub fn send_across(&self, id: FlowId, from: Side, bytes: Bytes) -> Result<(), SendError> {
        let shard = self.shard(id).ok_or(SendError::Gone)?;
        let map = shard.read().unwrap_or_else(|e| e.into_inner());
        let handle = map.get(&id).ok_or(SendError::Gone)?;
        if handle.side == from {
            return Err(SendError::SameZone);
        }
        handle.tx.try_send(bytes).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Gone,
        })
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
