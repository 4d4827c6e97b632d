//! Where the outsider's choices come from: the fuzz input byte by byte, or a seeded
//! generator for the deterministic property test.

/// A source of choices: fuzz input or a seeded generator.
pub trait Choices {
    /// A number in `0..n` (`n` > 0).
    fn pick(&mut self, n: usize) -> usize;
    /// Whether there is anything left to choose from (fuzz input runs out).
    fn more(&self) -> bool;
    /// Raw bytes, up to `max`.
    fn bytes(&mut self, max: usize) -> Vec<u8>;
}

/// One of `items`, as `c` picks (callers pass non-empty lists).
pub(super) fn one<T: Clone>(c: &mut dyn Choices, items: &[T]) -> T {
    let i = c.pick(items.len());
    #[allow(clippy::indexing_slicing)] // pick(n) < n; an empty list is a harness bug
    items[i].clone()
}

/// Choices from fuzz input.
pub struct FromInput<'a>(pub &'a [u8]);

impl Choices for FromInput<'_> {
    fn pick(&mut self, n: usize) -> usize {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        usize::from(b) % n.max(1)
    }
    fn more(&self) -> bool {
        !self.0.is_empty()
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.pick(max.max(1) + 1).min(self.0.len());
        let (take, rest) = self.0.split_at(n);
        self.0 = rest;
        take.to_vec()
    }
}

/// A small deterministic generator (xorshift64*), for the property test.
pub struct Seeded {
    state: u64,
    left: usize,
}

impl Seeded {
    pub fn new(seed: u64, steps: usize) -> Seeded {
        Seeded {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            left: steps,
        }
    }
}

impl Choices for Seeded {
    fn pick(&mut self, n: usize) -> usize {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r % n.max(1) as u64) as usize
    }
    fn more(&self) -> bool {
        self.left > 0
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.pick(max.max(1) + 1);
        (0..n).map(|_| self.pick(256) as u8).collect()
    }
}
