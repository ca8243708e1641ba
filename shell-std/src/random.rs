//! Randomness from the operating system, drawn by the shell and handed to the core as data
//! (RFC 6455 §4.1 and §5.3: the `Sec-WebSocket-Key` nonce and the masks must be unpredictable).

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

/// Fills `buf` with unpredictable bytes: `/dev/urandom` where there is one, otherwise std's
/// per-process random hash keys mixed with the time (the keys come from the OS too).
pub(crate) fn fill(buf: &mut [u8]) {
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
    {
        return;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_usize(i);
        let word = h.finish().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_draws_differ() {
        let (mut a, mut b) = ([0u8; 24], [0u8; 24]);
        super::fill(&mut a);
        super::fill(&mut b);
        assert_ne!(a, b);
    }
}
