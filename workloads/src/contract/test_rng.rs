//! A tiny deterministic pseudo-random generator for property-style tests (no extra crates).

/// Knuth's MMIX linear congruential generator; good enough to vary test inputs reproducibly.
pub(crate) struct Lcg(u64);

impl Lcg {
    /// A generator that always yields the same sequence for the same seed.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 32 pseudo-random bits (the high half of the state, the better-mixed one).
    pub(crate) fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 32) as u32
    }

    /// A number in `0..n`; `n` must not be zero.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.next_u32() as usize % n
    }

    /// A pseudo-random byte.
    pub(crate) fn byte(&mut self) -> u8 {
        (self.next_u32() >> 24) as u8
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}
