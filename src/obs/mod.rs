//! Observability: logging set-up, log rate limiting, the redaction of personal data, and
//! what the operations listener shows: the edge's [`snapshot`] as plain numbers, rendered by
//! [`render`] into `/metrics` (every metric name and label set) and `/status`.
//! Levels from `RUST_LOG` (default `info`), per module as `tracing`'s env filter reads
//! them, e.g. `RUST_LOG=info,sipedge::shell::conn=debug`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::core::firewall::{Gcra, Rate};

pub mod metrics;
pub mod redact;
pub mod render;
pub mod snapshot;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: human-readable lines, or JSON lines with `json`.
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is not an error worth failing for.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Rate-limits a class of log lines (rejects under a flood): lines beyond the rate are
/// counted, and the next line let through reports how many were suppressed.
pub struct LogLimiter {
    rate: Rate,
    gcra: Mutex<Gcra>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub fn new(rate: Rate) -> LogLimiter {
        LogLimiter {
            rate,
            gcra: Mutex::new(Gcra::default()),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were suppressed before it).
    /// Under a flood the callers race: one that finds the limiter busy counts its line as
    /// suppressed rather than wait for a lock on the reject path.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let ok = match self.gcra.try_lock() {
            Ok(mut g) => g.take(self.rate, now).is_ok(),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                p.into_inner().take(self.rate, now).is_ok()
            }
            Err(std::sync::TryLockError::WouldBlock) => false,
        };
        if ok {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests start simulated time from a real instant
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn log_limiter_counts_what_it_suppresses() {
        let l = LogLimiter::new(Rate {
            per_sec: 2,
            burst: 2,
        });
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        for _ in 0..10 {
            assert_eq!(l.allow(t0), None);
        }
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), Some(10));
    }
}
