//! The flow table: which connection a flow id names, for routing responses and requests
//! back. Sharded so that no lock is shared by every message: a lookup takes the read lock
//! of one of 64 shards for the time of a hash-map probe.
//!
//! Each flow's queue is bounded twice: in messages and in bytes (a counter shared by sender
//! and receiver), so a peer that stops reading holds at most
//! `limits.max_queued_bytes` of the edge's memory however large the messages are.

use crate::sync::{MutexExt, RwLockExt};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::core::sip::proxy::Side;
use crate::core::sip::token::FlowId;

const SHARDS: usize = 64;

/// How to reach a connection's writer.
#[derive(Clone, Debug)]
pub struct FlowHandle {
    pub side: Side,
    queue: Arc<Queue>,
    max_messages: usize,
    max_queued: usize,
}

/// The receiving end of a flow's queue (owned by the connection's task). Dropping it
/// closes the queue: later sends find the flow gone.
pub struct FlowReceiver {
    queue: Arc<Queue>,
}

/// One flow's queue. Not a channel: a channel allocates its first block of slots when it
/// is made and keeps it, about 1.5 KiB for every connection however idle; this holds a
/// `VecDeque` that is empty, without capacity, whenever nothing waits.
#[derive(Debug, Default)]
struct Queue {
    items: Mutex<VecDeque<Bytes>>,
    /// Bytes waiting (reserved by a sender before it queues them).
    queued: AtomicUsize,
    closed: AtomicBool,
    /// Wakes the receiver; a permit is kept if it is not waiting (no wake-up is lost).
    ready: Notify,
}

/// A new flow queue: at most `messages` messages and `max_bytes` bytes waiting.
pub fn queue(side: Side, messages: usize, max_bytes: usize) -> (FlowHandle, FlowReceiver) {
    let queue = Arc::new(Queue::default());
    (
        FlowHandle {
            side,
            queue: queue.clone(),
            max_messages: messages,
            max_queued: max_bytes,
        },
        FlowReceiver { queue },
    )
}

impl FlowReceiver {
    /// The next message (cancel-safe: nothing is taken until it returns).
    ///
    /// Each call spends one unit of the task's cooperative budget, as tokio's own channels
    /// do (a `Notify` does not): a connection whose queue is never empty (the inside
    /// sending it messages faster than it writes them) still yields to the other tasks.
    pub async fn recv(&mut self) -> Option<Bytes> {
        tokio::task::consume_budget().await;
        loop {
            if let Some(bytes) = self.try_recv() {
                return Some(bytes);
            }
            self.queue.ready.notified().await;
        }
    }

    pub fn try_recv(&mut self) -> Option<Bytes> {
        let mut items = self.queue.items.lock_unpoisoned();
        let bytes = items.pop_front()?;
        if items.is_empty() {
            // Nothing waits: hold no memory for it.
            *items = VecDeque::new();
        }
        drop(items);
        self.queue.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
        Some(bytes)
    }
}

impl Drop for FlowReceiver {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        // What was queued for a connection that is gone is freed now, not with the last
        // handle.
        let items = std::mem::take(&mut *self.queue.items.lock_unpoisoned());
        drop(items);
    }
}

impl FlowHandle {
    fn try_send(&self, bytes: Bytes) -> Result<(), SendError> {
        let queue = &*self.queue;
        if queue.closed.load(Ordering::Acquire) {
            return Err(SendError::Gone);
        }
        let len = bytes.len();
        // Reserve the bytes first; give them back if the queue refuses the message.
        let before = queue.queued.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) > self.max_queued {
            queue.queued.fetch_sub(len, Ordering::Relaxed);
            return Err(SendError::Full);
        }
        let mut items = queue.items.lock_unpoisoned();
        // Checked again under the lock: the receiver closes and empties it under the lock.
        let refused = if queue.closed.load(Ordering::Acquire) {
            Some(SendError::Gone)
        } else if items.len() >= self.max_messages {
            Some(SendError::Full)
        } else {
            None
        };
        if let Some(refused) = refused {
            drop(items);
            queue.queued.fetch_sub(len, Ordering::Relaxed);
            return Err(refused);
        }
        items.push_back(bytes);
        drop(items);
        queue.ready.notify_one();
        Ok(())
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
            let mut map = shard.write_unpoisoned();
            map.remove(&id);
            crate::core::firewall::shrink_sparse(&mut map);
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

    #[tokio::test]
    async fn a_queue_never_empty_still_lets_its_task_yield() {
        // Messages keep waiting: without the budget every receive would be ready at once and
        // the connection's task would never give its runtime thread to the others.
        let (handle, mut rx) = queue(Side::External, 100_000, usize::MAX);
        for _ in 0..10_000 {
            handle
                .try_send(Bytes::from_static(b"SIP/2.0 200 OK"))
                .unwrap();
        }
        let mut received = 0;
        let yielded = std::future::poll_fn(|cx| {
            for _ in 0..10_000 {
                let next = std::pin::pin!(rx.recv());
                match std::future::Future::poll(next, cx) {
                    std::task::Poll::Ready(got) => {
                        assert!(got.is_some());
                        received += 1;
                    }
                    std::task::Poll::Pending => return std::task::Poll::Ready(true),
                }
            }
            std::task::Poll::Ready(false)
        })
        .await;
        assert!(
            yielded,
            "{received} receives in one poll and the task never yielded"
        );
        assert!(received >= 1, "the first receive found a message");
        // Nothing was taken by the receive that yielded (cancel-safe).
        let mut left = 0;
        while rx.try_recv().is_some() {
            left += 1;
        }
        assert_eq!(received + left, 10_000);
    }

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
        assert_eq!(
            table.send_across(FlowId(7), Side::Internal, msg.clone()),
            Ok(())
        );
        // The receiver gone (the connection closed), the flow is gone for senders still
        // holding its handle.
        drop(rx);
        assert_eq!(
            table.send_across(FlowId(7), Side::Internal, msg),
            Err(SendError::Gone)
        );
    }

    #[test]
    fn the_queue_is_bounded_in_messages_and_holds_no_memory_once_read() {
        let (handle, mut rx) = queue(Side::External, 3, 1 << 20);
        for _ in 0..3 {
            assert_eq!(handle.try_send(Bytes::from_static(b"m")), Ok(()));
        }
        assert_eq!(
            handle.try_send(Bytes::from_static(b"m")),
            Err(SendError::Full)
        );
        while rx.try_recv().is_some() {}
        assert_eq!(handle.queue.items.lock_unpoisoned().capacity(), 0);
        assert_eq!(handle.queue.queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let (handle, mut rx) = queue(Side::External, 8, 1 << 20);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        assert_eq!(handle.try_send(Bytes::from_static(b"hello")), Ok(()));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(got.as_deref(), Some(&b"hello"[..]));
    }
}
