//! [`EdgeView`]: what the operations endpoints (`/healthz`, `/status`, `/metrics`, TURN
//! REST) read of a running edge.

use std::sync::Arc;

use super::routes::Routes;
use super::shared::Shared;
use super::turn::Turn;
use crate::tls::CertSummary;

/// The shared state, the routes, the relay, and who this instance is.
pub struct EdgeView {
    pub shared: Arc<Shared>,
    pub routes: Arc<Routes>,
    /// The TURN relay, when configured.
    pub turn: Option<Arc<Turn>>,
    /// Pool-wide state on Redis, when `[pool]` is configured.
    pub pool: Option<Arc<super::pool_state::PoolState>>,
    /// Instance name, and when it started (monotonic and Unix), for `/status`.
    pub name: String,
    pub started: std::time::Instant,
    pub started_unix: u64,
    /// The serving certificates (`external`, `internal`) as loaded (and reloaded).
    pub certificates: std::sync::RwLock<Vec<(&'static str, CertSummary)>>,
}
