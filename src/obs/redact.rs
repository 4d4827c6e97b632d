//! Personal data in logs: remote addresses, Call-IDs, user names. At info and above they
//! are written as a short keyed hash (`~3fa2c1d0`): the same value gives the same token for
//! the life of the process, so lines can still be correlated, but the value cannot be read
//! back (the key is random per process). `sipedge run --log-personal-data` writes them as
//! they are, for an operator who needs them and may keep them.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static SHOW: AtomicBool = AtomicBool::new(false);

fn key() -> &'static std::collections::hash_map::RandomState {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEY.get_or_init(std::collections::hash_map::RandomState::new)
}

/// Whether personal data is written as it is.
pub fn show_personal_data(show: bool) {
    SHOW.store(show, Ordering::Relaxed);
}

/// A value that is personal data, for a log line.
pub struct Pii<T>(pub T);

/// Marks `value` as personal data.
pub fn pii<T: fmt::Display>(value: T) -> Pii<T> {
    Pii(value)
}

impl<T: fmt::Display> fmt::Display for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if SHOW.load(Ordering::Relaxed) {
            return self.0.fmt(f);
        }
        let text = self.0.to_string();
        let token = key().hash_one(text.as_bytes());
        write!(f, "~{:08x}", token >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_by_default_stable_and_shown_on_request() {
        let a = pii("203.0.113.7:40000").to_string();
        assert!(a.starts_with('~') && a.len() == 9, "{a}");
        assert!(!a.contains("203.0.113"));
        assert_eq!(a, pii("203.0.113.7:40000").to_string(), "stable");
        assert_ne!(a, pii("203.0.113.8:40000").to_string());
        show_personal_data(true);
        assert_eq!(pii("203.0.113.7:40000").to_string(), "203.0.113.7:40000");
        show_personal_data(false);
    }
}
