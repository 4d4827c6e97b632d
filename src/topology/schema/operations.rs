//! The `[operations]` table: the inside listener for health, status and metrics.

use crate::topology::model::Operations;
use crate::topology::reader::{Doc, Section};

pub(super) const OPERATIONS_KEYS: &[&str] = &["listen"];

/// `Some(None)` when there is no `[operations]` table; `None` on a problem.
pub(super) fn read_operations(
    doc: &mut Doc<'_>,
    root: Section<'_, '_>,
) -> Option<Option<Operations>> {
    let s = doc.table(root, "operations", OPERATIONS_KEYS, false);
    if !s.present() {
        return Some(None);
    }
    let (listen, _) = doc.socket_addr(s, "listen", true)?;
    Some(Some(Operations { listen }))
}
