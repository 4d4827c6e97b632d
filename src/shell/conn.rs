//! One SIP connection (accepted from outside, accepted from inside, or opened to a next hop):
//! read, frame, hand each message to the core, send what it decides; write what other
//! connections queue for this flow; enforce the idle and header timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::clock;
use super::flows::{FlowHandle, SendError};
use super::Shared;
use crate::core::sip::frame::{Frame, Framer};
use crate::core::sip::message::Message;
use crate::core::sip::proxy::{Action, Flow, Side, TxKey};
use crate::core::sip::token::FlowId;
use crate::core::sip::Why;

/// Largest read per call; TLS records are at most 16 KiB anyway.
const READ_CHUNK: usize = 16 * 1024;
/// A peer that does not take our bytes for this long is cut off (it does not read).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for one connection by others before further ones are dropped.
pub const QUEUE_LEN: usize = 256;

/// Hooks for what only a next-hop connection does with messages.
pub trait ConnHooks {
    /// Called for each response before the proxy sees it; `true` consumes it (a probe answer).
    fn intercept_response(&mut self, _msg: &Message) -> bool {
        false
    }
    /// A final response to a pool transaction passed through this connection.
    fn completed(&mut self, _key: TxKey) {}
}

/// No hooks: an accepted connection.
pub struct Accepted;
impl ConnHooks for Accepted {}

/// A live connection's state.
pub struct Conn {
    pub flow: Flow,
    framer: Framer,
    inbuf: BytesMut,
    /// Bytes to write (answers from this task, queued bytes from others).
    pub out: BytesMut,
    last_read: Instant,
    message_started: Option<Instant>,
}

/// Why a connection ended.
#[derive(Debug)]
pub enum Closed {
    PeerClosed,
    Idle,
    HeaderTimeout,
    Framing(Why),
    Io(std::io::Error),
    WriteTimeout,
    Shutdown,
}

impl Conn {
    /// Registers a new flow in the table and returns the connection and its queue.
    pub fn register(
        shared: &Shared,
        side: Side,
        remote: SocketAddr,
    ) -> (Conn, mpsc::Receiver<Bytes>) {
        let id = shared.next_flow_id();
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        shared.flows.insert(id, FlowHandle { side, tx });
        let flow = Flow {
            id,
            side,
            remote,
            token: shared.proxy.keys().token(id),
        };
        let now = clock::now();
        let conn = Conn {
            flow,
            framer: Framer::new(),
            inbuf: BytesMut::with_capacity(4096),
            out: BytesMut::new(),
            last_read: now,
            message_started: None,
        };
        (conn, rx)
    }

    /// The read buffer, with room for the next read.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        if self.inbuf.capacity() - self.inbuf.len() < 1024 {
            self.inbuf.reserve(READ_CHUNK);
        }
        &mut self.inbuf
    }

    /// When the connection must next be checked for timeouts.
    pub fn deadline(&self, shared: &Shared) -> Instant {
        let idle = self.last_read + shared.limits.idle_timeout;
        match self.message_started {
            Some(t) => idle.min(t + shared.limits.header_timeout),
            None => idle,
        }
    }

    /// Checks the timeouts.
    pub fn check_timeouts(&self, shared: &Shared, now: Instant) -> Result<(), Closed> {
        if let Some(t) = self.message_started {
            if now >= t + shared.limits.header_timeout {
                return Err(Closed::HeaderTimeout);
            }
        }
        if now >= self.last_read + shared.limits.idle_timeout {
            return Err(Closed::Idle);
        }
        Ok(())
    }

    /// Handles freshly read bytes: every complete message goes through the core.
    pub fn handle_input(
        &mut self,
        shared: &Shared,
        hooks: &mut dyn ConnHooks,
        now: Instant,
    ) -> Result<(), Closed> {
        self.last_read = now;
        loop {
            let frame = match self.framer.check(&self.inbuf, &shared.limits.frame) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(why) => {
                    // The stream is unsynchronised: answer if we can, then close.
                    shared.stats.reject(why, self.flow.side);
                    tracing::debug!(flow = self.flow.id.0, remote = %self.flow.remote, reason = why.label(), "framing error");
                    if let Some(answer) = shared.proxy.answer(&self.inbuf, why, None) {
                        self.out.extend_from_slice(&answer);
                    }
                    return Err(Closed::Framing(why));
                }
            };
            match frame {
                Frame::Ping => {
                    let _ = self.inbuf.split_to(4);
                    self.out.extend_from_slice(b"\r\n");
                }
                Frame::Pong => {
                    let _ = self.inbuf.split_to(2);
                }
                Frame::Message { head, len } => {
                    let raw = self.inbuf.split_to(len).freeze();
                    self.handle_message(shared, hooks, raw, head);
                }
            }
        }
        self.message_started = if self.framer.is_mid_message(&self.inbuf) {
            self.message_started.or(Some(now))
        } else {
            None
        };
        Ok(())
    }

    fn handle_message(
        &mut self,
        shared: &Shared,
        hooks: &mut dyn ConnHooks,
        raw: Bytes,
        head: crate::core::sip::parse::Head,
    ) {
        let msg = match Message::validate(raw.clone(), head) {
            Ok(msg) => msg,
            Err(why) => {
                self.reject(shared, &raw, why, None);
                return;
            }
        };
        if !msg.is_request() && hooks.intercept_response(&msg) {
            return;
        }
        match shared.proxy.handle(&self.flow, &msg) {
            Action::ToPool { bytes, tx } => {
                if shared.pool.send(Bytes::from(bytes), tx, None).is_err() {
                    let why = Why::PoolUnavailable {
                        retry_after_secs: shared.pool.retry_after_secs,
                    };
                    self.reject(shared, &msg.raw, why, Some(&msg));
                } else {
                    shared.stats.forwarded(self.flow.side);
                }
            }
            Action::ToFlow {
                flow,
                bytes,
                completes,
            } => {
                if let Some(key) = completes {
                    hooks.completed(key);
                }
                self.send_to_flow(shared, &msg, flow, Bytes::from(bytes));
            }
            Action::Reject(why) => self.reject(shared, &msg.raw, why, Some(&msg)),
        }
    }

    fn send_to_flow(&mut self, shared: &Shared, msg: &Message, flow: FlowId, bytes: Bytes) {
        let result = if flow == self.flow.id {
            // A hairpin back to this very connection.
            self.out.extend_from_slice(&bytes);
            Ok(())
        } else {
            shared.flows.send(flow, bytes)
        };
        match result {
            Ok(()) => shared.stats.forwarded(self.flow.side),
            Err(SendError::Gone) if msg.is_request() => {
                self.reject(shared, &msg.raw, Why::FlowFailed, Some(msg))
            }
            Err(SendError::Full) if msg.is_request() => self.reject(
                shared,
                &msg.raw,
                Why::Overloaded {
                    retry_after_secs: shared.pool.retry_after_secs,
                },
                Some(msg),
            ),
            Err(e) => {
                shared.stats.dropped_response();
                tracing::debug!(flow = self.flow.id.0, target = flow.0, error = ?e, "response dropped");
            }
        }
    }

    fn reject(&mut self, shared: &Shared, raw: &[u8], why: Why, msg: Option<&Message>) {
        shared.stats.reject(why, self.flow.side);
        let call_id = msg.map(|m| String::from_utf8_lossy(m.bytes(m.call_id)).into_owned());
        tracing::debug!(
            flow = self.flow.id.0,
            remote = %self.flow.remote,
            reason = why.label(),
            call_id = call_id.as_deref().unwrap_or("-"),
            "rejected"
        );
        if let Some(answer) = shared.proxy.answer(raw, why, msg) {
            self.out.extend_from_slice(&answer);
        }
    }

    /// Drives the connection until it closes. `extra` lets a next-hop connection add its
    /// own events (pool messages, probes) through `hooks`; accepted connections pass none.
    pub async fn run<S>(
        mut self,
        shared: Arc<Shared>,
        mut stream: S,
        mut rx: mpsc::Receiver<Bytes>,
        hooks: &mut (dyn ConnHooks + Send),
    ) -> Closed
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut shutdown = shared.shutdown.clone();
        let closed = loop {
            let deadline = tokio::time::Instant::from_std(self.deadline(&shared));
            tokio::select! {
                read = stream.read_buf(self.read_buf()) => match read {
                    Ok(0) => break Closed::PeerClosed,
                    Ok(_) => {
                        if let Err(closed) = self.handle_input(&shared, hooks, clock::now()) {
                            let _ = flush(&mut stream, &mut self.out).await;
                            break closed;
                        }
                    }
                    Err(e) => break Closed::Io(e),
                },
                Some(bytes) = rx.recv() => {
                    self.out.extend_from_slice(&bytes);
                    // Take what else is queued, to write it in one go.
                    while let Ok(more) = rx.try_recv() {
                        self.out.extend_from_slice(&more);
                        if self.out.len() > 64 * 1024 { break; }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if let Err(closed) = self.check_timeouts(&shared, clock::now()) {
                        break closed;
                    }
                }
                _ = shutdown.changed() => break Closed::Shutdown,
            }
            if let Err(closed) = flush(&mut stream, &mut self.out).await {
                break closed;
            }
        };
        shared.flows.remove(self.flow.id);
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        closed
    }
}

/// Writes everything pending, with a deadline: a peer that stops reading is cut off.
pub async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
) -> Result<(), Closed> {
    if out.is_empty() {
        return Ok(());
    }
    let write = async {
        stream.write_all(out).await?;
        stream.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => {
            out.clear();
            Ok(())
        }
        Ok(Err(e)) => Err(Closed::Io(e)),
        Err(_) => Err(Closed::WriteTimeout),
    }
}
