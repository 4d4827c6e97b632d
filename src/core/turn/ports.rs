//! The relayed port range as a bitmap: which ports are taken (by an allocation or a
//! reservation) and where the next search starts. Taking a port costs at most one pass over
//! the range's words (1 024 for the whole 16-bit space), whatever the number of allocations
//! or reservations; releasing one is O(1).

/// The ports in `lo..=hi`, taken or free.
#[derive(Clone, Debug)]
pub struct Ports {
    lo: u16,
    hi: u16,
    used: Vec<u64>,
    /// The bit the next search starts at (ports are handed out round the range).
    cursor: usize,
}

impl Ports {
    /// The range `lo..=hi`; `seed` spreads the first port handed out over it.
    pub fn new(lo: u16, hi: u16, seed: u16) -> Ports {
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        let span = usize::from(hi - lo) + 1;
        let words = span.div_ceil(64);
        let mut used = vec![0u64; words];
        // Bits beyond the range are taken for good.
        let tail = span % 64;
        if tail != 0 {
            if let Some(last) = used.last_mut() {
                *last = !0u64 << tail;
            }
        }
        Ports {
            lo,
            hi,
            used,
            cursor: usize::from(seed) % span,
        }
    }

    fn index(&self, port: u16) -> Option<(usize, u32)> {
        if port < self.lo || port > self.hi {
            return None;
        }
        let i = usize::from(port - self.lo);
        Some((i / 64, (i % 64) as u32))
    }

    fn port(&self, word: usize, bit: u32) -> u16 {
        self.lo + (word * 64 + bit as usize) as u16
    }

    /// Ports taken now (O(range / 64): for checks, not the hot path).
    pub fn taken(&self) -> usize {
        let span = usize::from(self.hi - self.lo) + 1;
        let beyond = self.used.len() * 64 - span;
        self.used
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>()
            - beyond
    }

    pub fn is_free(&self, port: u16) -> bool {
        self.index(port)
            .and_then(|(w, b)| self.used.get(w).map(|word| word & (1 << b) == 0))
            .unwrap_or(false)
    }

    /// Marks `port` taken; `false` if it was not free (or not in the range).
    pub fn take_port(&mut self, port: u16) -> bool {
        let Some((w, b)) = self.index(port) else {
            return false;
        };
        match self.used.get_mut(w) {
            Some(word) if *word & (1 << b) == 0 => {
                *word |= 1 << b;
                true
            }
            _ => false,
        }
    }

    pub fn release(&mut self, port: u16) {
        if let Some((w, b)) = self.index(port) {
            if let Some(word) = self.used.get_mut(w) {
                *word &= !(1 << b);
            }
        }
    }

    /// Takes a free port: any, an even one, or an even one whose successor is free too
    /// (both are taken: the successor for a reservation, RFC 8656 §7.2 EVEN-PORT with R).
    /// The search starts after the last port handed out, so a port just released (or one
    /// another process turned out to hold) is the last to be handed out again.
    pub fn take(&mut self, even: bool, with_next: bool) -> Option<u16> {
        let words = self.used.len();
        if words == 0 {
            return None;
        }
        // Bit i of a word is port lo + 64 w + i: which bits are even ports depends on lo.
        let even_mask = if self.lo.is_multiple_of(2) {
            0x5555_5555_5555_5555u64
        } else {
            0xaaaa_aaaa_aaaa_aaaau64
        };
        let (start_word, start_bit) = (self.cursor / 64 % words, (self.cursor % 64) as u32);
        // One pass round the words, the start word twice: its bits from the cursor first,
        // the bits below the cursor last.
        for step in 0..=words {
            let w = (start_word + step) % words;
            let mut free = !self.used.get(w).copied().unwrap_or(!0);
            if step == 0 {
                free &= !0u64 << start_bit;
            } else if step == words {
                free &= (1u64 << start_bit) - 1;
            }
            let mut candidates = if even || with_next {
                free & even_mask
            } else {
                free
            };
            if with_next {
                // The next port is the next bit, or bit 0 of the next word for bit 63.
                let all_free = !self.used.get(w).copied().unwrap_or(!0);
                let next_word_free = self.used.get(w + 1).map_or(0, |n| u64::from(n & 1 == 0));
                candidates &= (all_free >> 1) | (next_word_free << 63);
            }
            while candidates != 0 {
                let bit = candidates.trailing_zeros();
                candidates &= candidates - 1;
                let port = self.port(w, bit);
                if with_next && port >= self.hi {
                    continue;
                }
                self.take_port(port);
                let taken = if with_next {
                    self.take_port(port + 1);
                    2
                } else {
                    1
                };
                self.cursor = w * 64 + bit as usize + taken;
                return Some(port);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_every_port_once_then_none() {
        let mut p = Ports::new(50000, 50099, 7);
        let mut got: Vec<u16> = (0..100).map(|_| p.take(false, false).unwrap()).collect();
        assert_eq!(p.take(false, false), None);
        got.sort();
        assert_eq!(got, (50000..=50099).collect::<Vec<_>>());
        p.release(50042);
        assert_eq!(p.take(false, false), Some(50042));
    }

    #[test]
    fn even_ports_and_pairs_across_word_boundaries() {
        for lo in [50000u16, 50001] {
            let mut p = Ports::new(lo, lo + 199, 0);
            // Take everything but one pair straddling a word boundary (bits 63 and 64).
            let straddle = lo + 63;
            for port in lo..=lo + 199 {
                if port != straddle && port != straddle + 1 {
                    assert!(p.take_port(port));
                }
            }
            let want_even = straddle % 2 == 0;
            assert_eq!(p.take(true, true), want_even.then_some(straddle), "lo {lo}");
            if !want_even {
                assert_eq!(p.take(true, false), Some(straddle + 1));
                assert_eq!(p.take(false, false), Some(straddle));
            }
            assert_eq!(p.take(false, false), None);
        }
        // A pair may not run past the range.
        let mut p = Ports::new(60000, 60001, 0);
        assert!(p.take_port(60000));
        assert_eq!(p.take(true, true), None);
        assert_eq!(p.take(false, false), Some(60001));
    }

    #[test]
    fn a_released_port_is_the_last_handed_out_again() {
        let mut p = Ports::new(50000, 50199, 0);
        let first = p.take(false, false).unwrap();
        p.release(first);
        let second = p.take(false, false).unwrap();
        assert_ne!(first, second, "the port just released came straight back");
        // Round the whole range before it comes back.
        let mut got = vec![second];
        while let Some(port) = p.take(false, false) {
            got.push(port);
        }
        assert_eq!(got.last(), Some(&first));
        assert_eq!(got.len(), 200);
        // And the search wraps: a port below the cursor is found.
        p.release(50000);
        assert_eq!(p.take(true, false), Some(50000));
    }

    #[test]
    fn every_search_is_bounded_by_the_range_not_by_what_is_taken() {
        // 16 bits of ports, all taken but the last: one pass finds it.
        let mut p = Ports::new(1024, 65535, 0);
        for port in 1024..65535 {
            assert!(p.take_port(port));
        }
        assert_eq!(p.take(true, false), None, "65535 is odd");
        assert_eq!(p.take(false, false), Some(65535));
        assert!(!p.is_free(65535) && !p.is_free(1024));
        assert!(!p.take_port(80), "outside the range");
    }
}
