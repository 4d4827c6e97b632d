//! Observability: logging set-up.
