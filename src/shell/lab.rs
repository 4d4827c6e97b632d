//! The lab Director's sockets: what `sipedge run` starts beside the edge on the embedded
//! loopback default, on that topology's next hop (127.0.0.1:5070), so that softphones can
//! register through the edge and call each other on a first run. The logic is
//! `core::lab`; here only a mutual-TLS listener (the dev PKI's Director certificate, the
//! edge's internal certificate required of clients), framing, and one task per connection.
//!
//! Plainly a lab: it refuses any address that is not loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::clock;
use super::tls_stream::{self, ReadOutcome};
use crate::core::lab::{ConnId, LabDirector};
use crate::core::sip::frame::{Frame, FrameLimits, Framer};
use crate::core::sip::parse::HeadLimits;
use crate::sync::MutexExt;
use crate::tls::{self, DevPki, DevRole};

/// Bytes of SIP the lab takes from one connection before it frames them (a lab's messages
/// are small; the edge already bounded them).
const LIMITS: FrameLimits = FrameLimits {
    head: HeadLimits {
        max_headers: 128,
        max_line_bytes: 8192,
    },
    max_header_bytes: 32 * 1024,
    max_body_bytes: 64 * 1024,
};
/// Messages queued for one connection before the lab drops further ones.
const QUEUE: usize = 1024;

/// Why the lab did not start.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab Director runs on loopback only, not on {0}")]
    NotLoopback(SocketAddr),
    #[error("the lab Director's certificate: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the lab Director cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The connections the edge opened to the lab, by number: where the Director's answers go.
type Connections = Arc<Mutex<HashMap<ConnId, mpsc::Sender<Vec<u8>>>>>;

/// Starts the lab Director on `addr` (loopback only) with the dev PKI's Director
/// certificate, requiring a client certificate from the dev CA; it runs until `shutdown`.
/// Returns the address bound.
pub async fn start(
    addr: SocketAddr,
    pki: &DevPki,
    shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, LabError> {
    if !addr.ip().is_loopback() {
        return Err(LabError::NotLoopback(addr));
    }
    let material = tls::load_cert(&pki.source(DevRole::Director), Some(pki), DevRole::Director)?;
    let roots = tls::load_roots(&pki.ca_source(), Some(pki))?;
    let config = tls::server_config_requiring_client(material, roots)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| LabError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| LabError::Bind { addr, source })?;
    let lab = Arc::new(Mutex::new(LabDirector::new(&bound.to_string())));
    let conns: Connections = Arc::default();
    tokio::spawn(async move {
        let mut next: ConnId = 0;
        let mut shutdown = shutdown;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            let Ok((tcp, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            next += 1;
            let (lab, conns, config) = (lab.clone(), conns.clone(), config.clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let handshake = tls_stream::accept(tcp, config);
                let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), handshake).await
                else {
                    return;
                };
                serve(stream, next, &lab, &conns, shutdown).await;
                conns.lock_unpoisoned().remove(&next);
            });
        }
    });
    Ok(bound)
}

/// One connection from the edge: messages in, the lab's sends out (on this connection or
/// another).
async fn serve(
    mut stream: Box<tls_stream::TlsStream<rustls::server::UnbufferedServerConnection>>,
    id: ConnId,
    lab: &Mutex<LabDirector>,
    conns: &Connections,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    conns.lock_unpoisoned().insert(id, tx);
    let mut inbuf: Vec<u8> = Vec::new();
    let mut framer = Framer::new();
    loop {
        let mut closed = false;
        tokio::select! {
            ready = stream.readable() => {
                if ready.is_err() {
                    return;
                }
                match stream.read(&mut |plain| inbuf.extend_from_slice(plain)) {
                    Ok(ReadOutcome::Data | ReadOutcome::WouldBlock) => {}
                    Ok(ReadOutcome::Closed) | Err(_) => closed = true,
                }
                let mut pongs = 0;
                loop {
                    match framer.check(&inbuf, &LIMITS) {
                        Ok(Some(Frame::Message { len, .. })) => {
                            let message: Vec<u8> = inbuf.drain(..len.min(inbuf.len())).collect();
                            let sends = lab.lock_unpoisoned().handle(id, &message, clock::now());
                            let conns = conns.lock_unpoisoned();
                            for (to, bytes) in sends {
                                if let Some(tx) = conns.get(&to) {
                                    let _ = tx.try_send(bytes);
                                }
                            }
                        }
                        Ok(Some(Frame::Ping)) => {
                            inbuf.drain(..4);
                            pongs += 1;
                        }
                        Ok(Some(Frame::Pong)) => {
                            inbuf.drain(..2);
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
                for _ in 0..pongs {
                    if stream.send(b"\r\n").is_err() {
                        return;
                    }
                }
            }
            Some(bytes) = rx.recv() => {
                if stream.send(&bytes).is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => closed = true,
        }
        if stream.flush(Duration::from_secs(10)).await.is_err() || closed {
            break;
        }
    }
    stream.shutdown(Duration::from_secs(1)).await;
}
