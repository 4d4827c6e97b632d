//! The `[keys]` table: where the pool key ring comes from (a file, or the dev ring).

use std::path::Path;

use crate::topology::model::KeysSource;
use crate::topology::reader::{Doc, Section};

pub(super) const KEYS_KEYS: &[&str] = &["ring", "dev"];

/// `Some(None)` without a `[keys]` table; `None` on a problem.
pub(super) fn read_keys(
    doc: &mut Doc<'_>,
    root: Section<'_, '_>,
    base: &Path,
) -> Option<Option<KeysSource>> {
    let s = doc.table(root, "keys", KEYS_KEYS, false);
    if !s.present() {
        return Some(None);
    }
    let dev = doc.boolean(s, "dev").is_some_and(|(b, _)| b);
    let ring = doc.string(s, "ring", false);
    match (dev, ring) {
        (true, Some((_, line))) => {
            doc.problem(line, s.key("ring"), "give ring or dev = true, not both");
            None
        }
        (true, None) => Some(Some(KeysSource::Dev)),
        (false, Some((path, _))) => Some(Some(KeysSource::File(base.join(path)))),
        (false, None) => {
            if !s.has("ring") {
                doc.problem(
                    doc.line_of_key(s, "ring"),
                    s.key("ring"),
                    "missing: the ring file (`sipedge keys init`), or dev = true",
                );
            }
            None
        }
    }
}
