//! Listeners: socket set-up and accept loops. On the external listener each new connection
//! first passes the per-source firewall (bans, connection rate, connections per source);
//! then, on every listener, it needs a handshake slot (a handshake flood cannot starve
//! established connections of CPU), must finish its TLS handshake within the handshake
//! timeout, and holds one permit of the connection cap for its lifetime. Whatever is over a
//! budget is closed at once, before any TLS work.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::clock;
use super::conn;
use super::conn::Routing;
use super::shared::Shared;
use super::tls_stream;
use crate::core::firewall::Refusal;
use crate::core::sip::proxy::Side;

/// Kernel accept queue length.
const BACKLOG: i32 = 1024;

/// Binds a TCP listener (SO_REUSEADDR so a restart does not wait for TIME_WAIT; IPv6
/// listeners are v6-only so the two families never alias). Its connections send each
/// message as it is written (TCP_NODELAY: SIP and media are latency-bound, never bulk).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_with(addr, None, None)
}

/// [`bind`], taking only connections that come in by `device` (`SO_BINDTODEVICE`): a
/// listener that grants a zone must not be reached through another interface.
pub fn bind_on(addr: SocketAddr, device: Option<&str>) -> std::io::Result<TcpListener> {
    bind_with(addr, None, device)
}

/// Every address of this host's interfaces now, with its interface (getifaddrs). Empty
/// where they cannot be read.
fn interface_addresses() -> Vec<(std::net::IpAddr, String)> {
    let Ok(all) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    all.filter_map(|a| {
        let s = a.address.as_ref()?;
        let ip = s
            .as_sockaddr_in()
            .map(|v4| std::net::IpAddr::V4(v4.ip()))
            .or_else(|| s.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))?;
        Some((ip, a.interface_name))
    })
    .collect()
}

/// Every address of this host now (what the relay and open federation refuse as the
/// edge's own, configured or not).
pub fn host_addresses() -> Vec<std::net::IpAddr> {
    let mut all: Vec<_> = interface_addresses()
        .into_iter()
        .map(|(ip, _)| ip)
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The interface `ip` is an address of (none for the wildcard address, or one the host does
/// not have: nothing to bind to, and a listener there could not be bound anyway).
pub fn interface_of(ip: std::net::IpAddr) -> Option<String> {
    if ip.is_unspecified() {
        return None;
    }
    interface_addresses()
        .into_iter()
        .find(|(a, _)| *a == ip)
        .map(|(_, name)| name)
}

/// Binds `socket` (for `addr`) to `device`. A kernel older than 5.7 asks CAP_NET_RAW for it:
/// without, the listener is left unbound and the edge says so (it still starts).
pub fn bind_device(socket: &Socket, addr: SocketAddr, device: &str) -> std::io::Result<()> {
    match socket.bind_device(Some(device.as_bytes())) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(%addr, device, "cannot bind the listener to its interface (CAP_NET_RAW on kernels before 5.7): it takes connections by any interface");
            Ok(())
        }
        other => other,
    }
}

/// [`bind`] for the external zone: each connection's kernel buffers are also capped at
/// [`EXTERNAL_SOCKET_BUFFER`] (a remote user's SIP needs a few kilobytes; Linux would
/// otherwise autotune the send buffer of a client that stops reading up to 4 MiB).
pub fn bind_external(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_with(addr, Some(EXTERNAL_SOCKET_BUFFER), None)
}

/// Set on the listening socket, not per connection: Linux gives every accepted socket the
/// listener's TCP_NODELAY and buffer sizes, which saves three system calls per connection
/// (a handshake at one client at a time is mostly system calls besides its crypto) and
/// lets the receive window's scale be chosen from the capped buffer in the SYN-ACK, where
/// setting it after the accept comes too late for that.
fn bind_with(
    addr: SocketAddr,
    buffers: Option<usize>,
    device: Option<&str>,
) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(device) = device {
        bind_device(&socket, addr, device)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(size) = buffers {
        socket.set_send_buffer_size(size)?;
        socket.set_recv_buffer_size(size)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until shutdown.
pub async fn accept_loop(
    shared: Arc<Shared>,
    routes: Arc<dyn Routing>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    side: Side,
    connections: Arc<Semaphore>,
) {
    let handshakes = Arc::new(Semaphore::new(shared.limits().max_handshakes));
    let mut shutdown = shared.shutdown.clone();
    let mut draining = shared.draining.clone();
    let mut backoff = Duration::from_millis(5);
    let mut failing = AcceptFailures::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
            // Draining: the listening socket closes, so new clients go elsewhere.
            _ = draining.wait_for(|d| *d) => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                failing.recovered(side);
                a
            }
            Err(e) => {
                // EMFILE and friends: back off rather than spin (mini-redis does the same),
                // and say so once, not at every retry.
                let _ = failing.failed(side, &e);
                // Out of descriptors: `/healthz` says so until the retry. Cleared before
                // retrying, not by the next accept that succeeds: with nobody waiting in the
                // backlog no accept would come, and a load balancer that believes the 503
                // sends nobody.
                let limit = side == Side::External && out_of_descriptors(&e);
                let flag = &shared.stats.external_out_of_descriptors;
                if limit {
                    flag.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(backoff).await;
                if limit {
                    flag.store(false, Ordering::Relaxed);
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // The firewall comes first: a banned or flooding source costs one accept and a close.
        let ticket = if side == Side::External {
            match SourceTicket::take(&shared, remote) {
                Ok(t) => Some(t),
                Err(refusal) => {
                    shared.stats.refused(refusal);
                    log_refusal(&shared, remote, refusal);
                    drop(tcp);
                    continue;
                }
            }
        } else {
            None
        };
        // A handshake slot, then a connection permit: over either budget, closed at once.
        let slots = handshakes
            .clone()
            .try_acquire_owned()
            .ok()
            .zip(connections.clone().try_acquire_owned().ok());
        let Some((handshake_slot, permit)) = slots else {
            shared
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        shared
            .stats
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let routes = routes.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(
                shared.limits().handshake_timeout,
                tls_stream::accept(tcp, tls),
            )
            .await;
            drop(handshake_slot);
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    shared
                        .stats
                        .handshakes_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared
                        .stats
                        .handshakes_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            // A verified certificate naming a partner edge (subjectAltName) makes a partner
            // flow; any other connection is a remote user's.
            let certificate = match side {
                Side::External => crate::tls::peer_identity(stream.common())
                    .map(|id| std::sync::Arc::<[String]>::from(id.dns_names)),
                Side::Internal => None,
            };
            let partner = certificate
                .as_ref()
                .and_then(|names| shared.proxy.federation().by_certificate(names));
            let (session, rx) = conn::register(&shared, side, remote, partner, certificate);
            let flow = session.flow().id;
            let (closed, _) = conn::run(session, &shared, &routes, stream, rx, None).await;
            tracing::debug!(%remote, flow = flow.0, reason = ?closed, "connection closed");
            drop(permit);
            drop(ticket);
        });
    }
}

/// The kernel buffers of a remote user's or partner's socket, each way. Linux grows them by
/// itself up to `tcp_wmem`/`tcp_rmem`'s maximum (4 to 6 MiB by default), which a client
/// that stops reading would make the edge hold in its send buffer, per connection; SIP
/// messages are a few kilobytes, and the flow queue (`limits.max_queued_bytes`) holds what
/// waits beyond this. The internal zone's few busy connections keep autotuning.
pub const EXTERNAL_SOCKET_BUFFER: usize = 64 * 1024;

/// A run of failed accepts (the descriptor limit, mostly), logged when it starts and when it
/// ends rather than at every retry: a full edge retries every second for as long as it is
/// full, and one line per retry would bury everything else.
#[derive(Default)]
struct AcceptFailures {
    failed: u64,
}

/// The process (EMFILE) or the system (ENFILE) is out of descriptors.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
    )
}

/// What the edge says when the descriptor limit stops it accepting.
const FD_LIMIT_REACHED: &str = "open-file limit reached: not accepting new connections until \
     some close (raise LimitNOFILE / ulimit -n, or lower limits.max_connections)";

impl AcceptFailures {
    /// Counts a failed accept; whether it was logged (the first of a run only).
    fn failed(&mut self, side: Side, e: &std::io::Error) -> bool {
        self.failed += 1;
        if self.failed > 1 {
            return false;
        }
        let zone = side.label();
        if out_of_descriptors(e) {
            tracing::error!(zone, error = %e, "{FD_LIMIT_REACHED}");
        } else {
            tracing::warn!(zone, error = %e, "accept failing: retrying with back-off");
        }
        true
    }

    fn recovered(&mut self, side: Side) {
        if self.failed > 0 {
            tracing::info!(
                zone = side.label(),
                failed_accepts = self.failed,
                "accepting connections again"
            );
            self.failed = 0;
        }
    }
}

/// One connection's place in its source's concurrent-connection count, released on drop
/// (however the connection ends).
struct SourceTicket {
    shared: Arc<Shared>,
    counted: crate::core::firewall::Counted,
}

impl SourceTicket {
    fn take(shared: &Arc<Shared>, remote: SocketAddr) -> Result<SourceTicket, Refusal> {
        let counted = shared.guard.connect(remote.ip(), clock::now())?;
        Ok(SourceTicket {
            shared: shared.clone(),
            counted,
        })
    }
}

impl Drop for SourceTicket {
    fn drop(&mut self) {
        self.shared.guard.disconnected(self.counted, clock::now());
    }
}

fn log_refusal(shared: &Shared, remote: SocketAddr, refusal: Refusal) {
    if let Some(suppressed) = shared.reject_log.allow(clock::now()) {
        let remote = crate::obs::redact::pii(remote);
        tracing::info!(%remote, zone = "external", reason = refusal.label(), suppressed, "connection refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failed_accepts_is_logged_once_and_again_after_recovering() {
        let emfile = std::io::Error::from_raw_os_error(24);
        let mut failing = AcceptFailures::default();
        assert!(failing.failed(Side::External, &emfile));
        assert!(!failing.failed(Side::External, &emfile));
        assert!(!failing.failed(Side::External, &emfile));
        failing.recovered(Side::External);
        assert!(failing.failed(Side::External, &emfile), "a new run");
        // One line of text (the bench and operators grep for it).
        assert!(!FD_LIMIT_REACHED.contains("  "), "{FD_LIMIT_REACHED:?}");
        assert!(FD_LIMIT_REACHED.starts_with("open-file limit reached"));
    }

    /// What [`bind_with`] relies on: the accepted socket carries the listener's options
    /// without a call of its own.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_the_external_buffer_cap() {
        let default = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let external = bind_external("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut sizes = Vec::new();
        for listener in [&default, &external] {
            let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            assert!(tcp.nodelay().unwrap());
            let socket = socket2::SockRef::from(&tcp);
            sizes.push((
                socket.send_buffer_size().unwrap(),
                socket.recv_buffer_size().unwrap(),
            ));
        }
        // Linux reports twice what was set.
        let capped = 2 * EXTERNAL_SOCKET_BUFFER;
        assert_eq!(sizes[1], (capped, capped));
        assert_ne!(
            sizes[0].0, capped,
            "the default listener's sockets keep autotuning"
        );
    }

    #[test]
    fn the_hosts_addresses_and_their_interfaces_are_read() {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        assert!(host_addresses().contains(&loopback));
        assert_eq!(interface_of(loopback).as_deref(), Some("lo"));
        assert_eq!(interface_of(std::net::IpAddr::from([0, 0, 0, 0])), None);
        // Inside 127/8 but no interface's address: nothing to bind to.
        assert_eq!(interface_of(std::net::IpAddr::from([127, 0, 0, 2])), None);
    }
}
