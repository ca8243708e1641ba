//! Hash maps with a hasher seeded from data. Topics and presence keys are chosen by peers, so the
//! maps want a seeded hasher against flooding (quinn's reasoning), and the core may not draw its
//! own randomness: the seed comes from configuration. Nothing iterates these maps into an
//! output without sorting first, so the seed never changes what the core emits.

use std::hash::BuildHasher;

/// A hashbrown map with foldhash seeded from configuration.
pub type HashMap<K, V> = hashbrown::HashMap<K, V, Seeded>;

/// The hasher builder: foldhash with a fixed, configured seed.
#[derive(Clone, Debug)]
pub struct Seeded(foldhash::fast::FixedState);

impl BuildHasher for Seeded {
    type Hasher = foldhash::fast::FoldHasher;
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// An empty map whose hasher is seeded with `seed`.
pub fn new_map<K, V>(seed: u64) -> HashMap<K, V> {
    hashbrown::HashMap::with_hasher(Seeded(foldhash::fast::FixedState::with_seed(seed)))
}
