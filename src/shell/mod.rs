//! The tokio shell: sockets, tasks, clocks. It moves bytes between connections and the
//! core; every protocol decision is the core's.
//!
//! What is shared, and by whom:
//! - [`Shared`] (`shared`): what every connection needs — the proxy, the flow table, the
//!   firewall, the limits in force, the call table, counters, drain and shutdown. It owns
//!   neither the pool, the partners nor the relay.
//! - [`Routes`] (`routes`): the next-hop [`pool`] and the federation [`partners`], which a
//!   connection reaches through the [`conn::Routing`] trait; pool members and partner
//!   connections run the same connection loop, so the loop knows only the trait.
//! - [`edge`]: start-up, reload, drain and stop ([`start`] returns a [`RunningEdge`];
//!   `sipedge run` and the integration tests both use it); [`EdgeView`] (`view`) is what
//!   the operations endpoints read.
//!
//! The rest: [`listen`] (accept loops: handshake timeout, connection cap), [`conn`] (the one
//! read/write/timer loop around a core session, for every kind of connection),
//! [`tls_stream`] (TLS on rustls's unbuffered API: no buffer held while idle), [`flows`]
//! (the flow table), [`ops`] (the operations HTTP endpoints), [`turn`] (the relay's
//! sockets), [`capture`] (SIP copies as HEP v3 to a collector), `config` (the topology translated into the core's and the shell's
//! configurations), `stats` (the Access Edge's counters, [`Stats`]), `error`
//! ([`StartError`]).
//!
//! Dependencies run one way: `clock`, `flows`, `stats`, `dns`, `keyfile`, `udp`,
//! `tls_stream`, `capture` <- `shared` <- `conn` <- `listen`, `pool`, `partners` <- `routes` <- `view`
//! <- `ops` <- `edge`.

pub mod capture;
pub mod clock;
mod config;
pub use listen::host_addresses;
pub mod conn;
pub mod dns;
pub mod edge;
mod error;
pub mod flows;
pub mod keyfile;
pub mod lab;
pub mod listen;
pub mod ops;
pub mod partners;
pub mod pool;
pub mod pool_state;
pub mod ring;
mod routes;
mod shared;
mod stats;
pub mod tls_stream;
pub mod turn;
pub mod udp;
mod view;

pub use config::dev_names;
pub use edge::{start, ReloadError, Reloaded, RunningEdge};
pub use error::StartError;
pub use routes::Routes;
pub use shared::{ConnLimits, CredentialService, Shared};
pub use stats::{Stats, REFUSAL_LABELS, RESPONSES};
pub use view::EdgeView;
