//! Forwarding by splicing: the original bytes with exactly the edits a proxy makes.
//!
//! Owns the edit list and its application. Edits are insertions, deletions and
//! replacements at offsets of the original message; they must not overlap (a bug if they
//! do, reported as `None` rather than a panic). Headers the edge does not own, and the body,
//! pass byte-exact — except that folded header lines are flattened (CR LF becomes two
//! spaces, same length and same meaning, RFC 3261 §7.3.1) so that no next hop has to
//! unfold.

use super::parse::Span;

#[derive(Clone, Copy, Debug)]
struct Edit {
    /// The original range replaced (empty for an insertion).
    at: Span,
    /// The new bytes, as a range of `Splice::text`.
    text: Span,
    /// A tidy-up that gives way to any other edit it overlaps (normalising a header name
    /// whose line is deleted anyway).
    soft: bool,
}

/// A set of edits over one message.
#[derive(Debug, Default)]
pub struct Splice {
    edits: Vec<Edit>,
    text: Vec<u8>,
}

impl Splice {
    pub fn new() -> Splice {
        Splice {
            edits: Vec::with_capacity(8),
            text: Vec::with_capacity(512),
        }
    }

    /// Inserts bytes before offset `at`. Insertions at one offset keep their order.
    pub fn insert(&mut self, at: usize, bytes: &[u8]) {
        self.replace(Span::new(at, at), bytes);
    }

    /// Inserts text produced by `write` (avoids a temporary string).
    pub fn insert_with(&mut self, at: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.text.len();
        write(&mut self.text);
        self.edits.push(Edit {
            at: Span::new(at, at),
            text: Span::new(start, self.text.len()),
            soft: false,
        });
    }

    /// Deletes `span` unless another edit touches it (then that edit wins).
    pub fn delete_unless_edited(&mut self, span: Span) {
        self.edits.push(Edit {
            at: span,
            text: Span::new(self.text.len(), self.text.len()),
            soft: true,
        });
    }

    pub fn delete(&mut self, span: Span) {
        self.replace(span, b"");
    }

    /// Replaces `span` with text produced by `write` (avoids a temporary string).
    pub fn replace_with(&mut self, span: Span, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.text.len();
        write(&mut self.text);
        self.edits.push(Edit {
            at: span,
            text: Span::new(start, self.text.len()),
            soft: false,
        });
    }

    pub fn replace(&mut self, span: Span, bytes: &[u8]) {
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        self.edits.push(Edit {
            at: span,
            text: Span::new(start, self.text.len()),
            soft: false,
        });
    }

    /// Applies the edits to `raw`. `flatten_head` (the end of the header block) asks for
    /// folds in the header block to be flattened. `None` if edits overlap or fall outside.
    pub fn apply(mut self, raw: &[u8], flatten_head: Option<usize>) -> Option<Vec<u8>> {
        let hard: Vec<Span> = self
            .edits
            .iter()
            .filter(|e| !e.soft)
            .map(|e| e.at)
            .collect();
        self.edits.retain(|e| {
            !e.soft
                || !hard
                    .iter()
                    .any(|h| h.start < e.at.end && e.at.start < h.end || h.start == e.at.start)
        });
        // Stable: insertions at one offset stay in the order they were made.
        self.edits.sort_by_key(|e| (e.at.start, e.at.end));
        let added: usize = self.edits.iter().map(|e| e.text.len()).sum();
        let mut out = Vec::with_capacity(raw.len() + added);
        let mut pos = 0;
        for e in &self.edits {
            if e.at.start < pos || e.at.end > raw.len() || e.at.start > e.at.end {
                return None;
            }
            out.extend_from_slice(raw.get(pos..e.at.start)?);
            out.extend_from_slice(e.text.of(&self.text));
            pos = e.at.end;
        }
        out.extend_from_slice(raw.get(pos..)?);
        if let Some(head_end) = flatten_head {
            flatten_folds(&mut out, head_end.saturating_add(added));
        }
        Some(out)
    }
}

/// Replaces the CR LF of every fold (CR LF followed by SP or HTAB) in `out[..limit]` with two
/// spaces. `limit` may overshoot the header block: the block ends at the first CRLF CRLF and
/// scanning stops there.
fn flatten_folds(out: &mut [u8], limit: usize) {
    let limit = limit.min(out.len());
    let mut i = 0;
    while i + 2 < limit {
        let is_crlf = out.get(i) == Some(&b'\r') && out.get(i + 1) == Some(&b'\n');
        if is_crlf {
            match out.get(i + 2) {
                Some(b' ') | Some(b'\t') => {
                    if let Some(pair) = out.get_mut(i..i + 2) {
                        pair.copy_from_slice(b"  ");
                    }
                }
                Some(b'\r') => return, // end of the header block
                _ => {}
            }
            i += 2;
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_in_order() {
        let raw = b"0123456789";
        let mut s = Splice::new();
        s.insert(5, b"a");
        s.delete(Span::new(1, 3));
        s.insert(5, b"b");
        s.replace(Span::new(8, 10), b"XY");
        assert_eq!(s.apply(raw, None).unwrap(), b"034ab567XY");
    }

    #[test]
    fn soft_deletes_give_way_to_other_edits() {
        let raw = b"0123456789";
        let mut s = Splice::new();
        s.delete_unless_edited(Span::new(1, 2)); // kept
        s.delete_unless_edited(Span::new(4, 6)); // inside a hard delete: dropped
        s.delete(Span::new(3, 8));
        assert_eq!(s.apply(raw, None).unwrap(), b"0289");
    }

    #[test]
    fn overlap_is_refused() {
        let mut s = Splice::new();
        s.delete(Span::new(1, 5));
        s.delete(Span::new(3, 6));
        assert!(s.apply(b"0123456789", None).is_none());
    }

    #[test]
    fn folds_are_flattened_in_head_only() {
        let raw = b"A: x\r\n y\r\n\r\nbody\r\n z";
        let out = Splice::new().apply(raw, Some(12)).unwrap();
        assert_eq!(out, b"A: x   y\r\n\r\nbody\r\n z");
    }
}
