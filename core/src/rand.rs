//! A small seeded generator (SplitMix64) for values the protocol wants unpredictable but the
//! core must reproduce on replay: client masks, backoff jitter. The seed comes from the shell,
//! which draws it from the OS; the core never does.

use serde::{Deserialize, Serialize};

/// SplitMix64 (Steele, Lea, Flood 2014): one add, three xor-shift-multiplies per draw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Four pseudo-random bytes, as a frame mask.
    pub fn next_mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }
}
