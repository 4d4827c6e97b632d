//! TLS over one TCP socket with rustls's unbuffered API, for every SIP connection (accepted
//! on either listener, opened to a pool member or a partner edge).
//!
//! What it owns, and why it exists: an idle connection holds no buffer. rustls's buffered
//! connection keeps a 4 KiB receive buffer per connection for its whole life, and a reader
//! above it keeps another; with 100 000 remote users mostly idle between keep-alives, those
//! buffers are most of the edge's memory. Here a read waits for the socket to be readable
//! with nothing allocated, reads the ciphertext into this thread's scratch buffer, decrypts
//! the records there and hands the plaintext on at once; only the bytes of a record not
//! complete yet stay with the connection (`partial`, exactly their size, freed when the
//! record completes). What is to be written is encrypted into `outgoing` and the buffer is
//! freed once the socket took it.
//!
//! Bounds: `partial` holds at most one incomplete record (rustls refuses records over
//! 16 KiB + overhead) or, during the handshake, the fragments of one handshake message
//! (rustls refuses them over 64 KiB); `outgoing` holds what the connection's own writer put
//! in it (bounded by the flow queue and the session) until the write deadline cuts a peer
//! that does not read. Early data (0-RTT) is never accepted: SIP requests must not be
//! replayable, and the server configs do not offer it.

use std::cell::RefCell;
use std::io::{self, ErrorKind};
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Largest read from the socket at once (into the thread's scratch buffer).
const READ_SIZE: usize = 32 * 1024;

thread_local! {
    /// Where ciphertext is read and decrypted: one per runtime thread, borrowed only within
    /// one synchronous read (never across an await).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads what the socket holds, without waiting; `None` when it holds nothing.
///
/// A read shorter than the buffer drained the socket, and the socket is then marked not
/// readable (epoll is edge-triggered: the next arrival raises a new edge; a close stays
/// marked), as tokio's own `poll_read` does. `try_read` alone keeps the mark until a read
/// fails, so every wake-up ended in one more read returning EAGAIN and, on a connection, one
/// more turn of its loop. Not through `poll_read` itself: that one is counted against the
/// task's cooperative budget and, once the budget is spent, answers "not ready" with the
/// socket still marked, and the connection's loop (whose wait is not budgeted) would spin
/// on it without yielding. `try_io` clears the mark when its closure says "would block",
/// and only if no new edge came since the read began (tokio compares the event's tick).
fn read_now(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let room = buf.len();
    let mut drained = None;
    let result = tcp.try_io(Interest::READABLE, || {
        let n = tcp.try_read(buf)?;
        if 0 < n && n < room {
            drained = Some(n);
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (result, drained) {
        (_, Some(n)) => Ok(Some(n)),
        (Ok(n), None) => Ok(Some(n)),
        (Err(e), None) if e.kind() == ErrorKind::WouldBlock => Ok(None),
        (Err(e), None) => Err(e),
    }
}

/// A rustls unbuffered connection, server or client side.
pub trait TlsSide: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> + Send {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl TlsSide for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl TlsSide for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// A TLS connection on a TCP socket.
pub struct TlsStream<C> {
    tcp: TcpStream,
    conn: C,
    /// Received bytes rustls has not discarded yet: an incomplete record (or handshake
    /// message). Empty, without capacity, between records.
    partial: Vec<u8>,
    /// Encrypted bytes not written yet. Empty, without capacity, once written.
    outgoing: Vec<u8>,
    /// Plaintext that arrived with the handshake's last flight, for the first read.
    early_plaintext: Vec<u8>,
    /// The peer sent close_notify (or closed the socket).
    peer_closed: bool,
    /// rustls refused the connection: it is not called again (see [`TlsStream::fail`]).
    failed: bool,
}

/// What one read brought.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Plaintext was handed on, or only part of a record arrived.
    Data,
    /// Readiness was spurious: nothing to read after all.
    WouldBlock,
    /// The peer closed (close_notify or end of stream).
    Closed,
}

/// Where the state machine stopped for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The handshake needs more of the peer's bytes.
    NeedInput,
    /// Application data may be written; more records need more bytes.
    Writable,
    Closed,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e)
}

/// Accepts a TLS connection (the handshake, with whatever deadline the caller puts on it).
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> io::Result<Box<TlsStream<UnbufferedServerConnection>>> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    // Boxed from the start: the futures that hold it (the handshake's, the connection
    // task's) then carry a pointer, not a copy of its kilobyte each.
    let mut stream = Box::new(TlsStream::new(tcp, conn));
    stream.handshake().await?;
    Ok(stream)
}

/// Opens a TLS connection on a connected socket, to `name`.
pub async fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<Box<TlsStream<UnbufferedClientConnection>>> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
    let mut stream = Box::new(TlsStream::new(tcp, conn));
    stream.handshake().await?;
    Ok(stream)
}

impl<C: TlsSide> TlsStream<C> {
    fn new(tcp: TcpStream, conn: C) -> TlsStream<C> {
        TlsStream {
            tcp,
            conn,
            partial: Vec::new(),
            outgoing: Vec::new(),
            early_plaintext: Vec::new(),
            peer_closed: false,
            failed: false,
        }
    }

    /// The edge's end of the connection.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }

    /// What the handshake established (peer certificates, version, suite).
    pub fn common(&self) -> &rustls::CommonState {
        &self.conn
    }

    /// Bytes encrypted but not written yet.
    pub fn pending_write(&self) -> usize {
        self.outgoing.len()
    }

    async fn handshake(&mut self) -> io::Result<()> {
        loop {
            let mut partial = std::mem::take(&mut self.partial);
            let early = &mut self.early_plaintext;
            let result = process(
                &mut self.conn,
                &mut partial,
                &mut self.outgoing,
                &mut self.peer_closed,
                &mut |plain| early.extend_from_slice(plain),
            );
            self.partial = partial;
            let stop = match result {
                Ok(stop) => stop,
                Err(e) => {
                    // The client learns why (the alert), rather than seeing a reset.
                    self.fail();
                    let _ = self.flush(Duration::from_millis(200)).await;
                    return Err(e);
                }
            };
            self.flush_all().await?;
            if !self.conn.is_handshaking() {
                // The reads' room is not kept: only what is pending, at its size.
                self.partial.shrink_to_fit();
                return Ok(());
            }
            if stop == Stop::Closed || self.peer_closed {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "peer closed during the TLS handshake",
                ));
            }
            // More of the peer's flight: straight into `partial` (the handshake is brief).
            self.tcp.readable().await?;
            let start = self.partial.len();
            self.partial.resize(start + READ_SIZE, 0);
            let read = self
                .partial
                .get_mut(start..)
                .map(|tail| read_now(&self.tcp, tail));
            match read.unwrap_or(Ok(Some(0))) {
                Ok(Some(0)) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "peer closed during the TLS handshake",
                    ))
                }
                Ok(Some(n)) => self.partial.truncate(start + n),
                Ok(None) => self.partial.truncate(start),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the socket may be read (cancel-safe: nothing is held while waiting).
    ///
    /// Each wait spends one unit of the task's cooperative budget, and yields to the other
    /// tasks once the budget is spent. Waiting for readiness is not budgeted in tokio, nor is
    /// the read: without this a peer that never lets its socket drain (a flood, or just a
    /// fast sender) would keep its connection's task running without ever yielding, holding
    /// a runtime thread from every other connection, the health checks included.
    pub async fn readable(&self) -> io::Result<()> {
        tokio::task::consume_budget().await;
        if !self.early_plaintext.is_empty() || self.peer_closed {
            return Ok(());
        }
        self.tcp.readable().await
    }

    /// Reads what the socket has, decrypts it and hands the plaintext to `deliver` (record
    /// by record). Call after [`TlsStream::readable`]; never waits.
    pub fn read(&mut self, deliver: &mut dyn FnMut(&[u8])) -> io::Result<ReadOutcome> {
        if !self.early_plaintext.is_empty() {
            deliver(&std::mem::take(&mut self.early_plaintext));
            return Ok(ReadOutcome::Data);
        }
        if self.peer_closed {
            return Ok(ReadOutcome::Closed);
        }
        if self.failed {
            return Err(unexpected("the TLS connection failed"));
        }
        SCRATCH.with_borrow_mut(|scratch| self.read_into(scratch, deliver))
    }

    fn read_into(
        &mut self,
        scratch: &mut Vec<u8>,
        deliver: &mut dyn FnMut(&[u8]),
    ) -> io::Result<ReadOutcome> {
        let kept = self.partial.len();
        if scratch.len() < kept + READ_SIZE {
            scratch.resize(kept + READ_SIZE, 0);
        }
        let (head, tail) = scratch.split_at_mut(kept);
        head.copy_from_slice(&self.partial);
        let read = match read_now(&self.tcp, tail)? {
            Some(0) => {
                self.peer_closed = true;
                return Ok(ReadOutcome::Closed);
            }
            Some(n) => n,
            None => return Ok(ReadOutcome::WouldBlock),
        };
        let incoming = scratch.get_mut(..kept + read).unwrap_or_default();
        let (consumed, stop) = match drive(
            &mut self.conn,
            incoming,
            &mut self.outgoing,
            &mut self.peer_closed,
            deliver,
        ) {
            Ok(done) => done,
            Err(e) => {
                // The alert goes out with the shutdown that follows.
                self.fail();
                return Err(tls_error(e));
            }
        };
        // Exactly the incomplete record's bytes (none: no allocation at all).
        self.partial = incoming.get(consumed..).unwrap_or_default().to_vec();
        if stop == Stop::Closed || self.peer_closed {
            return Ok(ReadOutcome::Closed);
        }
        Ok(ReadOutcome::Data)
    }

    /// Encrypts `plaintext` for writing (written by [`TlsStream::flush`]).
    pub fn send(&mut self, plaintext: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(unexpected("the TLS connection failed"));
        }
        if plaintext.is_empty() {
            return Ok(());
        }
        // The pending bytes go in as they are: rustls's view of the input must stay whole.
        let mut partial = std::mem::take(&mut self.partial);
        let result = (|| loop {
            let UnbufferedStatus { discard, state } = self.conn.process(&mut partial);
            if discard != 0 {
                return Err(unexpected("records completed while writing"));
            }
            match state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    let start = self.outgoing.len();
                    // A record's overhead is at most a few dozen bytes; 64 per 16 KiB
                    // fragment is ample, and a too-small buffer is simply grown.
                    let mut room = plaintext.len() + 64 * (plaintext.len() / 16_384 + 1);
                    loop {
                        self.outgoing.resize(start + room, 0);
                        let out = self.outgoing.get_mut(start..).unwrap_or_default();
                        match traffic.encrypt(plaintext, out) {
                            Ok(n) => {
                                self.outgoing.truncate(start + n);
                                return Ok(());
                            }
                            Err(EncryptError::InsufficientSize(e)) if e.required_size > room => {
                                room = e.required_size
                            }
                            Err(e) => {
                                self.outgoing.truncate(start);
                                return Err(io::Error::other(e));
                            }
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut self.outgoing, |out| encode.encode(out))?
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => {
                    return Err(io::Error::new(
                        ErrorKind::BrokenPipe,
                        "TLS connection closed",
                    ))
                }
                _ => return Err(unexpected("no application data may be sent now")),
            }
        })();
        self.partial = partial;
        result
    }

    /// Writes what is encrypted, within `deadline` (a peer that stops reading is cut off);
    /// the write buffer is freed once written.
    pub async fn flush(&mut self, deadline: Duration) -> io::Result<()> {
        if self.outgoing.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(deadline, self.flush_all()).await {
            Ok(done) => done,
            Err(_) => Err(io::Error::new(ErrorKind::TimedOut, "write timed out")),
        }
    }

    async fn flush_all(&mut self) -> io::Result<()> {
        let mut written = 0;
        while written < self.outgoing.len() {
            self.tcp.writable().await?;
            match self
                .tcp
                .try_write(self.outgoing.get(written..).unwrap_or_default())
            {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        Ok(())
    }

    /// Ends the connection: close_notify (if the connection can still send one) and the
    /// TCP FIN, each within `deadline`.
    pub async fn shutdown(&mut self, deadline: Duration) {
        let _ = self.close_notify();
        let _ = self.flush(deadline).await;
        let _ = tokio::time::timeout(deadline, self.tcp.shutdown()).await;
    }

    fn close_notify(&mut self) -> io::Result<()> {
        // After a fatal alert there is no close_notify.
        if self.failed {
            return Ok(());
        }
        let mut partial = std::mem::take(&mut self.partial);
        let UnbufferedStatus { state, .. } = self.conn.process(&mut partial);
        let result = match state.map_err(tls_error)? {
            ConnectionState::WriteTraffic(mut traffic) => {
                encode_into(&mut self.outgoing, |out| traffic.queue_close_notify(out))
            }
            _ => Ok(()),
        };
        self.partial = partial;
        result
    }

    /// rustls refused the connection: the alert it queued goes into `outgoing`, and
    /// rustls is not called again. Exactly one call: the queued alert comes out before
    /// rustls looks at any input, while a further call would read the failed bytes again,
    /// and a second fatal alert is a panic inside rustls (`!self.sent_fatal_alert`:
    /// reached with one plain-text line sent to a TLS port).
    fn fail(&mut self) {
        if std::mem::replace(&mut self.failed, true) {
            return;
        }
        let mut partial = std::mem::take(&mut self.partial);
        let UnbufferedStatus { state, .. } = self.conn.process(&mut partial);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            let _ = encode_into(&mut self.outgoing, |out| encode.encode(out));
        }
    }
}

fn unexpected(what: &'static str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what)
}

/// Appends what `encode` writes to `out`, growing it to the size rustls asks for.
fn encode_into<E: Into<EncodeFailure>>(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = 1024;
    loop {
        out.resize(start + room, 0);
        match encode(out.get_mut(start..).unwrap_or_default()).map_err(Into::into) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeFailure::TooSmall(required)) if required > room => room = required,
            Err(EncodeFailure::TooSmall(_)) | Err(EncodeFailure::Other) => {
                out.truncate(start);
                return Err(unexpected("TLS record could not be encoded"));
            }
        }
    }
}

/// Why an encode into a buffer failed.
enum EncodeFailure {
    TooSmall(usize),
    Other,
}

impl From<EncodeError> for EncodeFailure {
    fn from(e: EncodeError) -> EncodeFailure {
        match e {
            EncodeError::InsufficientSize(s) => EncodeFailure::TooSmall(s.required_size),
            EncodeError::AlreadyEncoded => EncodeFailure::Other,
        }
    }
}

impl From<EncryptError> for EncodeFailure {
    fn from(e: EncryptError) -> EncodeFailure {
        match e {
            EncryptError::InsufficientSize(s) => EncodeFailure::TooSmall(s.required_size),
            EncryptError::EncryptExhausted => EncodeFailure::Other,
        }
    }
}

/// Runs the state machine over `incoming` until it needs more bytes or may write:
/// handshake records it produces go to `outgoing`, plaintext to `deliver`. Returns how many
/// bytes of `incoming` rustls is done with (the rest is an incomplete record) and why it
/// stopped.
fn drive<C: TlsSide>(
    conn: &mut C,
    incoming: &mut [u8],
    outgoing: &mut Vec<u8>,
    peer_closed: &mut bool,
    deliver: &mut dyn FnMut(&[u8]),
) -> Result<(usize, Stop), rustls::Error> {
    let mut consumed = 0;
    loop {
        let rest = incoming.get_mut(consumed..).unwrap_or_default();
        let UnbufferedStatus { discard, state } = conn.process(rest);
        let mut also = 0;
        let stop = match state? {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record?;
                    also += record.discard;
                    deliver(record.payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(outgoing, |out| encode.encode(out))
                    .map_err(|_| rustls::Error::General("handshake record not encoded".into()))?;
                None
            }
            // The bytes are in `outgoing`, which is written, in order, before anything
            // else is read or written.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                None
            }
            ConnectionState::BlockedHandshake => Some(Stop::NeedInput),
            ConnectionState::WriteTraffic(_) => Some(Stop::Writable),
            ConnectionState::PeerClosed => {
                *peer_closed = true;
                None
            }
            ConnectionState::Closed => Some(Stop::Closed),
            // Early data is never offered; anything new to this rustls is refused.
            _ => {
                return Err(rustls::Error::General(
                    "unexpected TLS connection state".into(),
                ))
            }
        };
        consumed += discard + also;
        if let Some(stop) = stop {
            return Ok((consumed, stop));
        }
    }
}

/// [`drive`] over a connection's own pending bytes (the handshake), keeping the rest.
fn process<C: TlsSide>(
    conn: &mut C,
    pending: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
    peer_closed: &mut bool,
    deliver: &mut dyn FnMut(&[u8]),
) -> io::Result<Stop> {
    let (consumed, stop) =
        drive(conn, pending, outgoing, peer_closed, deliver).map_err(tls_error)?;
    pending.drain(..consumed.min(pending.len()));
    Ok(stop)
}

#[cfg(test)]
mod tests {
    //! Real loopback sockets: this stream on one side, rustls's buffered connection (or this
    //! stream again) on the other, certificates from the dev PKI.
    use super::*;
    use std::io::{Read, Write};
    use std::task::Poll;

    use crate::tls::config::{
        client_config_trusting, external_server_config, internal_server_config,
    };
    use crate::tls::dev::{self, DevNames};
    use crate::tls::load::{load_cert, load_roots};
    use crate::tls::{DevPki, DevRole};

    struct Certs {
        _dir: tempfile::TempDir,
        pki: DevPki,
    }

    fn certs() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let names = DevNames {
            external: vec!["sip.example.test".into()],
            internal: vec!["edge-int.example.test".into()],
            director: vec!["director.example.test".into()],
        };
        let pki = dev::generate(dir.path(), &names).unwrap();
        Certs { _dir: dir, pki }
    }

    impl Certs {
        fn external_server(&self) -> Arc<ServerConfig> {
            let m = load_cert(&self.pki.source(DevRole::External), None, DevRole::External);
            external_server_config(m.unwrap(), None).unwrap()
        }

        fn internal_server(&self) -> Arc<ServerConfig> {
            let m = load_cert(&self.pki.source(DevRole::Internal), None, DevRole::Internal);
            internal_server_config(m.unwrap(), self.roots()).unwrap()
        }

        fn roots(&self) -> rustls::RootCertStore {
            load_roots(&self.pki.ca_source(), None).unwrap()
        }

        fn client(&self) -> Arc<ClientConfig> {
            client_config_trusting(self.roots(), None).unwrap()
        }
    }

    fn sip_name() -> ServerName<'static> {
        ServerName::try_from("sip.example.test").unwrap()
    }

    /// The external listener's end of a loopback connection, handshake done, and a rustls
    /// client on a thread of its own that completes the handshake and then runs `then`.
    async fn accepted_with_client<T: Send + 'static>(
        certs: &Certs,
        then: impl FnOnce(rustls::ClientConnection, std::net::TcpStream) -> T + Send + 'static,
    ) -> (
        Box<TlsStream<UnbufferedServerConnection>>,
        std::thread::JoinHandle<T>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client_cfg = certs.client();
        let client = std::thread::spawn(move || {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            let mut tls = rustls::ClientConnection::new(client_cfg, sip_name()).unwrap();
            while tls.is_handshaking() {
                tls.complete_io(&mut tcp).unwrap();
            }
            then(tls, tcp)
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let stream = accept(tcp, certs.external_server()).await.unwrap();
        (stream, client)
    }

    /// Reads until `want` plaintext bytes arrived (or the peer closed), checking after each
    /// read that only an incomplete record is kept, and nothing once records are whole.
    async fn read_exactly<C: TlsSide>(stream: &mut TlsStream<C>, want: usize) -> Vec<u8> {
        read_counting_partials(stream, want).await.0
    }

    /// [`read_exactly`], and how many reads ended with an incomplete record kept.
    async fn read_counting_partials<C: TlsSide>(
        stream: &mut TlsStream<C>,
        want: usize,
    ) -> (Vec<u8>, usize) {
        let mut got = Vec::new();
        let mut partials = 0;
        while got.len() < want {
            stream.readable().await.unwrap();
            match stream.read(&mut |p| got.extend_from_slice(p)).unwrap() {
                ReadOutcome::Closed => break,
                ReadOutcome::Data | ReadOutcome::WouldBlock => {}
            }
            // No buffer kept between records; an incomplete one is kept at its size.
            assert_eq!(
                stream.partial.capacity(),
                stream.partial.len(),
                "only the pending bytes are kept"
            );
            partials += usize::from(!stream.partial.is_empty());
        }
        (got, partials)
    }

    #[tokio::test]
    async fn a_record_split_across_reads_arrives_whole_and_an_idle_stream_holds_no_buffer() {
        // Also: what the client sends with its last handshake flight (rustls writes it in
        // the same segment as Finished) is handed on by the first read, not lost.
        let certs = certs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client_cfg = certs.client();
        let message: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let sent = message.clone();
        let client = std::thread::spawn(move || {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            let mut tls = rustls::ClientConnection::new(client_cfg, sip_name()).unwrap();
            tls.writer().write_all(b"hello").unwrap();
            while tls.is_handshaking() {
                tls.complete_io(&mut tcp).unwrap();
            }
            // One record, written in three pieces with pauses: the edge sees it in parts.
            tls.writer().write_all(&sent).unwrap();
            let mut record = Vec::new();
            tls.write_tls(&mut record).unwrap();
            let (a, rest) = record.split_at(7);
            let (b, c) = rest.split_at(rest.len() / 2);
            for piece in [a, b, c] {
                tcp.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            // The echo, then close_notify.
            let mut echo = vec![0; sent.len()];
            let mut reader = rustls::Stream::new(&mut tls, &mut tcp);
            reader.read_exact(&mut echo).unwrap();
            tls.send_close_notify();
            tls.complete_io(&mut tcp).unwrap();
            echo
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = accept(tcp, certs.external_server()).await.unwrap();
        assert!(!stream.common().is_handshaking());
        assert_eq!(
            stream.partial.capacity(),
            0,
            "nothing kept after the handshake"
        );
        let first = read_exactly(&mut stream, 5).await;
        assert_eq!(first, b"hello");
        let (got, partials) = read_counting_partials(&mut stream, message.len()).await;
        assert!(partials > 0, "the record arrived in parts");
        assert!(
            got == message,
            "{} bytes, not the {} sent",
            got.len(),
            message.len()
        );
        stream.send(&got).unwrap();
        assert!(
            stream.pending_write() > got.len(),
            "encrypted: a record's overhead"
        );
        stream.flush(Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            stream.outgoing.capacity(),
            0,
            "the write buffer goes once written"
        );
        assert!(client.join().unwrap() == message, "the echo differs");
        // close_notify ends the stream.
        loop {
            stream.readable().await.unwrap();
            match stream
                .read(&mut |p| panic!("data after the echo: {p:?}"))
                .unwrap()
            {
                ReadOutcome::Closed => break,
                ReadOutcome::Data | ReadOutcome::WouldBlock => {}
            }
        }
    }

    #[tokio::test]
    async fn a_read_that_drains_the_socket_leaves_it_waiting_for_the_next_arrival() {
        // The wait after a read that took all there was sleeps until more arrives, rather
        // than returning at once for a read that finds nothing (one system call and one turn
        // of the connection's loop per message, otherwise); and nothing that arrives later,
        // data or the close, is missed.
        let certs = certs();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (mut stream, client) = accepted_with_client(&certs, move |mut tls, mut tcp| {
            for message in [&b"OPTIONS one"[..], b"OPTIONS two"] {
                go_rx.recv().unwrap();
                tls.writer().write_all(message).unwrap();
                tls.complete_io(&mut tcp).unwrap();
            }
            go_rx.recv().unwrap();
            tls.send_close_notify();
            tls.complete_io(&mut tcp).unwrap();
        })
        .await;
        for message in [&b"OPTIONS one"[..], b"OPTIONS two"] {
            go_tx.send(()).unwrap();
            assert_eq!(read_exactly(&mut stream, message.len()).await, message);
            let waited = tokio::time::timeout(Duration::from_millis(100), stream.readable()).await;
            assert!(
                waited.is_err(),
                "the socket is still marked readable after a read drained it"
            );
        }
        go_tx.send(()).unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                stream.readable().await.unwrap();
                match stream.read(&mut |p| panic!("data after the messages: {p:?}")) {
                    Ok(ReadOutcome::Closed) => break,
                    Ok(ReadOutcome::Data | ReadOutcome::WouldBlock) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the close was missed");
        client.join().unwrap();
    }

    #[tokio::test]
    async fn a_read_reads_even_when_the_task_has_spent_its_budget() {
        // tokio gives a task a budget of operations per poll and answers "not ready" to
        // budgeted ones once it is spent. A read here must not be one of them: the socket
        // would stay marked readable, the connection's wait would return at once, and the
        // read would say "nothing" again, for ever, without the task ever yielding.
        let certs = certs();
        let (mut stream, client) = accepted_with_client(&certs, |mut tls, mut tcp| {
            tls.writer().write_all(b"OPTIONS").unwrap();
            tls.complete_io(&mut tcp).unwrap();
            // Held open until the edge has read.
            let mut end = [0u8; 1];
            let _ = tcp.read(&mut end);
        })
        .await;
        // The record is there (peeked, not taken).
        stream.tcp.peek(&mut [0u8; 1]).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        for _ in 0..1000 {
            tx.send(()).unwrap();
        }
        let mut got = Vec::new();
        let outcome = std::future::poll_fn(|cx| {
            // Budgeted receives until the budget is spent (the channel is far from empty).
            let mut received = 0;
            while rx.poll_recv(cx).is_ready() {
                received += 1;
            }
            assert!(received < 1000, "the budget was never spent");
            Poll::Ready(stream.read(&mut |p| got.extend_from_slice(p)).unwrap())
        })
        .await;
        assert_eq!(outcome, ReadOutcome::Data);
        assert_eq!(got, b"OPTIONS");
        drop(stream);
        client.join().unwrap();
    }

    #[tokio::test]
    async fn a_wait_with_data_waiting_still_yields_once_the_task_has_spent_its_budget() {
        // A peer that never lets its socket drain makes every wait ready at once; the
        // connection's task must still yield to the others now and then, or it would hold its
        // runtime thread for as long as the peer keeps sending.
        let certs = certs();
        let (stream, client) = accepted_with_client(&certs, |mut tls, mut tcp| {
            tls.writer().write_all(b"OPTIONS").unwrap();
            tls.complete_io(&mut tcp).unwrap();
            let _ = tcp.read(&mut [0u8; 1]);
        })
        .await;
        stream.tcp.peek(&mut [0u8; 1]).await.unwrap();
        let mut ready = 0;
        let yielded = std::future::poll_fn(|cx| {
            for _ in 0..10_000 {
                let wait = std::pin::pin!(stream.readable());
                match std::future::Future::poll(wait, cx) {
                    Poll::Ready(done) => {
                        done.unwrap();
                        ready += 1;
                    }
                    Poll::Pending => return Poll::Ready(true),
                }
            }
            Poll::Ready(false)
        })
        .await;
        assert!(
            yielded,
            "{ready} waits in one poll and the task never yielded"
        );
        assert!(ready >= 1, "the first wait found the data");
        drop(stream);
        client.join().unwrap();
    }

    #[tokio::test]
    async fn both_ends_of_this_stream_talk_tls_1_2_and_1_3() {
        let certs = certs();
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client_cfg = Arc::new(
                ClientConfig::builder_with_provider(crate::tls::config::provider())
                    .with_protocol_versions(&[version])
                    .unwrap()
                    .with_root_certificates(certs.roots())
                    .with_no_client_auth(),
            );
            let server_cfg = certs.external_server();
            let server = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut stream = accept(tcp, server_cfg).await.unwrap();
                let version = stream.common().protocol_version();
                let got = read_exactly(&mut stream, 5).await;
                stream.send(b"pong!").unwrap();
                stream.flush(Duration::from_secs(5)).await.unwrap();
                (got, version)
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut stream = connect(tcp, client_cfg, sip_name()).await.unwrap();
            stream.send(b"ping!").unwrap();
            stream.flush(Duration::from_secs(5)).await.unwrap();
            let answer = read_exactly(&mut stream, 5).await;
            let (got, negotiated) = server.await.unwrap();
            assert_eq!(got, b"ping!");
            assert_eq!(answer, b"pong!");
            assert_eq!(negotiated, Some(version.version));
            stream.shutdown(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test]
    async fn a_refused_handshake_fails_the_accept_and_tells_the_client_why() {
        let certs = certs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The internal listener's mutual TLS; this client has no certificate.
        let client_cfg = certs.client();
        let client = std::thread::spawn(move || {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            let name = ServerName::try_from("edge-int.example.test").unwrap();
            let mut tls = rustls::ClientConnection::new(client_cfg, name).unwrap();
            loop {
                if let Err(e) = tls.complete_io(&mut tcp) {
                    return e.to_string();
                }
                if !tls.is_handshaking() {
                    // TLS 1.3: the client is done before the server has judged it; the
                    // verdict comes with the next read.
                    let mut byte = [0u8; 1];
                    return match rustls::Stream::new(&mut tls, &mut tcp).read(&mut byte) {
                        Err(e) => e.to_string(),
                        Ok(n) => format!("read {n} bytes"),
                    };
                }
            }
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let refused = accept(tcp, certs.internal_server()).await;
        assert!(refused.is_err(), "no client certificate, no connection");
        let seen = client.join().unwrap();
        assert!(
            seen.contains("CertificateRequired") || seen.contains("alert"),
            "the client sees the alert, not a reset: {seen}"
        );
    }

    /// What is not TLS at all (plain SIP or TURN on a TLS port, an HTTP probe, noise) fails
    /// the accept with an error and an alert, never a panic: rustls panics on a second fatal
    /// alert, which offering the failed bytes again used to cause.
    #[tokio::test]
    async fn bytes_that_are_not_tls_fail_the_accept_without_a_panic() {
        let certs = certs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for garbage in [
            &b"OPTIONS sip:edge SIP/2.0\r\nContent-Length: 0\r\n\r\n"[..],
            &[0x00, 0x03, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42][..],
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01][..],
            &[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5][..],
        ] {
            let sender = std::thread::spawn(move || {
                let mut tcp = std::net::TcpStream::connect(addr).unwrap();
                tcp.write_all(garbage).unwrap();
                // What comes back: an alert record (type 21) or nothing, then the close.
                let mut back = Vec::new();
                let _ = tcp.read_to_end(&mut back);
                back
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let refused =
                tokio::time::timeout(Duration::from_secs(5), accept(tcp, certs.external_server()))
                    .await
                    .expect("refused at once, not left waiting");
            assert!(refused.is_err(), "{garbage:?} made a TLS connection");
            let back = sender.join().unwrap();
            assert!(back.is_empty() || back.first() == Some(&21), "{back:?}");
        }
    }

    /// Garbage after a good handshake (a record that is not TLS, or one that does not
    /// decrypt) fails the read; the shutdown after it sends the alert and calls rustls no
    /// further: no panic either way.
    #[tokio::test]
    async fn garbage_after_the_handshake_fails_the_read_and_the_shutdown_without_a_panic() {
        let certs = certs();
        for garbage in [
            &b"BYE sip:x SIP/2.0\r\n\r\n"[..],
            &[
                0x17, 0x03, 0x03, 0x00, 0x20, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
                7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
            ][..],
        ] {
            let (mut stream, client) = accepted_with_client(&certs, move |_tls, mut tcp| {
                tcp.write_all(garbage).unwrap();
                let mut back = Vec::new();
                let _ = tcp.read_to_end(&mut back);
            })
            .await;
            let mut failed = false;
            for _ in 0..20 {
                stream.readable().await.unwrap();
                match stream.read(&mut |_| {}) {
                    Err(_) => {
                        failed = true;
                        break;
                    }
                    Ok(ReadOutcome::Closed) => break,
                    Ok(_) => {}
                }
            }
            assert!(failed, "{garbage:?} was read as TLS");
            assert!(
                stream.send(b"more").is_err(),
                "nothing is sent after a failure"
            );
            stream.shutdown(Duration::from_millis(500)).await;
            client.join().unwrap();
        }
    }
}
