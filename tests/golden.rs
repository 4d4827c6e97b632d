//! Golden accept/reject files (being written).
