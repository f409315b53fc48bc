//! The seeded generator that fills benchmark payloads (SplitMix64): the same `--seed` gives the
//! same bytes on every run, and the bytes are not trivially compressible.

/// SplitMix64's increment (2^64 / φ).
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A SplitMix64 generator. Not cryptographic; only deterministic and well mixed.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The generator for one stream (an appender, a producer connection) of a run's `seed`:
    /// different streams of one seed, and one stream of different seeds, give unrelated bytes.
    pub fn new(seed: u64, stream: u64) -> SplitMix64 {
        SplitMix64::from_state(mix(seed) ^ mix(stream.wrapping_add(GOLDEN_GAMMA)))
    }

    /// The generator with this exact internal state (the reference algorithm's seed).
    pub fn from_state(state: u64) -> SplitMix64 {
        SplitMix64 { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }

    /// Overwrites `bytes` with the next outputs, little-endian, 8 bytes per output.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// SplitMix64's output function (a variant of MurmurHash3's 64-bit finaliser).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64() {
        // The first outputs of the reference implementation (Vigna) from state 0.
        let mut rng = SplitMix64::from_state(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(rng.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn the_same_seed_and_stream_give_the_same_bytes() {
        let bytes = |seed, stream| {
            let mut out = vec![0u8; 1003];
            SplitMix64::new(seed, stream).fill(&mut out);
            out
        };
        assert_eq!(bytes(1, 0), bytes(1, 0));
        assert_ne!(bytes(1, 0), bytes(2, 0));
        assert_ne!(bytes(1, 0), bytes(1, 1));
        // A partial last word still takes the low bytes of the next output.
        let mut rng = SplitMix64::new(7, 3);
        let first = rng.next_u64().to_le_bytes();
        let mut three = [0u8; 3];
        SplitMix64::new(7, 3).fill(&mut three);
        assert_eq!(three, first[..3]);
    }

    #[test]
    fn payloads_are_not_trivially_compressible() {
        let mut bytes = vec![0u8; 1 << 16];
        SplitMix64::new(1, 0).fill(&mut bytes);
        let mut seen = [0u32; 256];
        for &b in &bytes {
            seen[usize::from(b)] += 1;
        }
        // Every byte value appears, none more than twice its fair share.
        let fair = bytes.len() as u32 / 256;
        assert!(seen.iter().all(|&n| n > 0 && n < 2 * fair), "{seen:?}");
    }
}
