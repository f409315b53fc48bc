//! Choosing a partition for a record: Kafka's murmur2 for keys, sticky for keyless records.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Picks the partition of records sent without an explicit one.
///
/// `partition` is called once per record, with the topic's current partition count (at least 1);
/// its result must be below that count. `batch_complete` tells the partitioner that a batch of a
/// partition was closed, which sticky partitioners use to move on.
///
/// ```
/// use sluice_client::Partitioner;
///
/// /// Every record to partition 0.
/// #[derive(Debug)]
/// struct First;
/// impl Partitioner for First {
///     fn partition(&self, _topic: &str, _key: Option<&[u8]>, _partitions: u32) -> u32 {
///         0
///     }
/// }
/// assert_eq!(First.partition("t", None, 8), 0);
/// ```
pub trait Partitioner: Send + Sync + std::fmt::Debug {
    fn partition(&self, topic: &str, key: Option<&[u8]>, partitions: u32) -> u32;

    fn batch_complete(&self, _topic: &str, _partition: u32, _partitions: u32) {}
}

/// Kafka's default partitioner: records with a key go to `murmur2(key) % partitions` (so a key
/// lands on the partition a Kafka client would choose), records without a key stick to one
/// partition until its batch is complete, then move to another chosen at random.
///
/// ```
/// use sluice_client::{DefaultPartitioner, Partitioner};
///
/// let p = DefaultPartitioner::new();
/// let a = p.partition("orders", Some(b"customer-42"), 12);
/// assert_eq!(a, p.partition("orders", Some(b"customer-42"), 12));
/// ```
#[derive(Debug)]
pub struct DefaultPartitioner {
    sticky: Mutex<HashMap<String, u32>>,
    random: AtomicU64,
}

impl Default for DefaultPartitioner {
    fn default() -> Self {
        Self::new()
    }
}

impl DefaultPartitioner {
    pub fn new() -> DefaultPartitioner {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x5eed);
        DefaultPartitioner {
            sticky: Mutex::new(HashMap::new()),
            random: AtomicU64::new(hasher.finish() | 1),
        }
    }

    fn next_random(&self) -> u64 {
        // splitmix64 over an atomic counter: no lock, good enough spread for picking partitions.
        let mut z = self
            .random
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn sticky(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.sticky.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Partitioner for DefaultPartitioner {
    fn partition(&self, topic: &str, key: Option<&[u8]>, partitions: u32) -> u32 {
        let partitions = partitions.max(1);
        if let Some(key) = key {
            return key_partition(key, partitions);
        }
        let mut sticky = self.sticky();
        match sticky.get(topic) {
            Some(&p) if p < partitions => p,
            _ => {
                let p = (self.next_random() % u64::from(partitions)) as u32;
                sticky.insert(topic.to_owned(), p);
                p
            }
        }
    }

    fn batch_complete(&self, topic: &str, partition: u32, partitions: u32) {
        let mut sticky = self.sticky();
        if sticky.get(topic) != Some(&partition) {
            return; // Already moved on (a keyed record's batch, or another batch completed).
        }
        let next = if partitions > 1 {
            // Any partition but the one just used.
            let step = 1 + self.next_random() % u64::from(partitions - 1);
            ((u64::from(partition) + step) % u64::from(partitions)) as u32
        } else {
            0
        };
        sticky.insert(topic.to_owned(), next);
    }
}

/// The partition Kafka's default partitioner gives `key`: `toPositive(murmur2(key)) % n`.
///
/// ```
/// use sluice_client::key_partition;
///
/// // The same key always lands on the same partition of a 12-partition topic.
/// assert_eq!(key_partition(b"customer-42", 12), key_partition(b"customer-42", 12));
/// assert!(key_partition(b"customer-42", 12) < 12);
/// ```
pub fn key_partition(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) as u32) & 0x7fff_ffff) % partitions.max(1)
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`): MurmurHash2, 32-bit, seed
/// `0x9747b28c`, little-endian words.
///
/// ```
/// // A vector from Kafka's own tests.
/// assert_eq!(sluice_client::murmur2(b"21"), -973932308);
/// ```
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    #[test]
    fn keys_are_stable_and_in_range() {
        let p = DefaultPartitioner::new();
        for i in 0..1000 {
            let key = format!("key-{i}");
            let a = p.partition("t", Some(key.as_bytes()), 7);
            assert!(a < 7);
            assert_eq!(
                a,
                DefaultPartitioner::new().partition("t", Some(key.as_bytes()), 7)
            );
        }
    }

    #[test]
    fn keyless_records_stick_until_the_batch_completes() {
        let p = DefaultPartitioner::new();
        let first = p.partition("t", None, 4);
        assert_eq!(p.partition("t", None, 4), first);
        p.batch_complete("t", first, 4);
        let second = p.partition("t", None, 4);
        assert_ne!(second, first);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let current = p.partition("t", None, 4);
            seen.insert(current);
            p.batch_complete("t", current, 4);
        }
        assert_eq!(seen.len(), 4, "every partition gets keyless batches");
        assert_eq!(p.partition("solo", None, 1), 0);
    }
}
