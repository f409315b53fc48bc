//! The tail cache: batches recently written to disk, kept in memory for tail consumers.
//!
//! Each flush hands its buffer over as one [`Chunk`]; large buffers are shared with the write
//! (the very bytes that went to disk), small ones are copied to a piece of a power-of-two size
//! (reused across the shard's flushes, [`CopiedBytes`]) so a burst of tiny flushes does not pin
//! many large buffers. Reads borrow ranges of chunks: no
//! record bytes are copied. Each log's part is bounded by its `cache_bytes_max`, and all logs of
//! a shard share one budget (`limits::SHARD_CACHE_BYTES_MAX`): what was written longest ago, in
//! any log, is evicted first. An idle partition's data thus leaves the cache as busy ones
//! write, and a shard's cache memory does not grow with its partition count.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::rc::Rc;

use glommio::io::DmaBuffer;

/// Memory behind a chunk.
#[derive(Debug)]
pub enum ChunkBytes {
    Shared(Rc<DmaBuffer>),
    Copied(CopiedBytes),
}

impl ChunkBytes {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ChunkBytes::Shared(buf) => buf.as_bytes(),
            ChunkBytes::Copied(bytes) => bytes.as_bytes(),
        }
    }
}

/// Size classes of the copies a shard reuses: powers of two from 1 KiB to
/// `COPY_CLASS_BYTES_MAX`. A many-partition shard copies tens of thousands of small flushes a
/// second, and the system allocator spent a tenth of a shard's time on those copies' odd sizes.
const COPY_CLASS_BYTES_MIN: usize = 1 << 10;
const COPY_CLASS_BYTES_MAX: usize = 64 << 10;
const COPY_CLASSES: usize =
    (COPY_CLASS_BYTES_MAX / COPY_CLASS_BYTES_MIN).trailing_zeros() as usize + 1;

/// Each size class's free copies on a shard, and the bytes they hold together.
type CopyPool = ([Vec<Box<[u8]>>; COPY_CLASSES], usize);

thread_local! {
    static COPY_POOL: RefCell<CopyPool> = RefCell::new((Default::default(), 0));
}

/// The class (and its size) a copy of `len` bytes is taken from, if it is small enough to pool.
fn copy_class(len: usize) -> Option<(usize, usize)> {
    if len > COPY_CLASS_BYTES_MAX {
        return None;
    }
    let size = len.max(COPY_CLASS_BYTES_MIN).next_power_of_two();
    Some((
        (size / COPY_CLASS_BYTES_MIN).trailing_zeros() as usize,
        size,
    ))
}

/// A copy of a small flush's batches, in memory reused across the shard's flushes (bounded by
/// `limits::SHARD_COPY_POOL_BYTES_MAX` while unused).
#[derive(Debug)]
pub struct CopiedBytes {
    buf: Box<[u8]>,
    len: usize,
}

impl CopiedBytes {
    pub fn of(bytes: &[u8]) -> CopiedBytes {
        let len = bytes.len();
        let Some((class, size)) = copy_class(len) else {
            return CopiedBytes {
                buf: bytes.into(),
                len,
            };
        };
        let pooled = COPY_POOL
            .try_with(|p| {
                let mut pool = p.borrow_mut();
                let buf = pool.0[class].pop()?;
                pool.1 -= size;
                Some(buf)
            })
            .ok()
            .flatten();
        let mut buf = pooled.unwrap_or_else(|| vec![0; size].into_boxed_slice());
        buf[..len].copy_from_slice(bytes);
        CopiedBytes { buf, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Bytes of memory it holds.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

impl Drop for CopiedBytes {
    fn drop(&mut self) {
        let size = self.buf.len();
        let Some((class, class_size)) = copy_class(size) else {
            return;
        };
        if class_size != size {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        // During thread teardown the pool may already be gone: the copy is simply freed.
        let _ = COPY_POOL.try_with(|p| {
            let mut pool = p.borrow_mut();
            if pool.1 + size <= crate::limits::SHARD_COPY_POOL_BYTES_MAX {
                pool.0[class].push(buf);
                pool.1 += size;
            }
        });
    }
}

/// Bytes of unused copies this shard keeps for reuse.
pub fn shard_copy_pool_bytes() -> usize {
    COPY_POOL.try_with(|p| p.borrow().1).unwrap_or(0)
}

/// Where one batch sits inside a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedBatch {
    pub base_offset: u64,
    pub next_offset: u64,
    pub start: u32,
    pub len: u32,
}

/// A run of consecutive batches that were written together.
#[derive(Debug)]
pub struct Chunk {
    bytes: ChunkBytes,
    /// Bytes of memory the chunk holds, for the cache's bound.
    charge: usize,
    batches: Vec<CachedBatch>,
}

impl Chunk {
    pub fn new(bytes: ChunkBytes, charge: usize, batches: Vec<CachedBatch>) -> Chunk {
        debug_assert!(batches
            .windows(2)
            .all(|w| w[0].next_offset == w[1].base_offset));
        Chunk {
            bytes,
            charge,
            batches,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_bytes()
    }

    fn first_offset(&self) -> u64 {
        self.batches.first().map_or(u64::MAX, |b| b.base_offset)
    }

    fn next_offset(&self) -> u64 {
        self.batches.last().map_or(0, |b| b.next_offset)
    }
}

/// A contiguous byte range of whole batches inside a cached chunk.
#[derive(Debug, Clone)]
pub struct ChunkSlice {
    pub chunk: Rc<Chunk>,
    pub range: Range<usize>,
}

impl ChunkSlice {
    pub fn as_bytes(&self) -> &[u8] {
        &self.chunk.as_bytes()[self.range.clone()]
    }
}

/// One log's chunks in the shard-wide cache, oldest first.
#[derive(Debug, Default)]
struct LogChunks {
    chunks: VecDeque<(u64, Rc<Chunk>)>,
    bytes: usize,
    bytes_max: usize,
}

/// Every log's cached chunks on one shard (thread), under one byte budget: a push beyond
/// `bytes_max` evicts the chunks written longest ago, whichever logs hold them. Logs that go
/// quiet thus give their memory to the busy ones without doing anything.
#[derive(Debug)]
struct ShardCache {
    logs: HashMap<u64, LogChunks>,
    /// `(log, chunk)` in the order chunks were pushed; entries of chunks already gone (a log
    /// cleared, closed, or over its own bound) are skipped when reached.
    order: VecDeque<(u64, u64)>,
    /// Chunks held, over every log (kept as they change: summing them per push cost a scan of
    /// every log, 12 % of a shard's time with 10,000 partitions).
    live: usize,
    bytes: usize,
    bytes_max: usize,
    next_log: u64,
    next_chunk: u64,
}

impl ShardCache {
    fn evict_oldest(&mut self) -> bool {
        while let Some((log, chunk)) = self.order.pop_front() {
            let Some(chunks) = self.logs.get_mut(&log) else {
                continue;
            };
            if chunks.chunks.front().is_some_and(|(id, _)| *id == chunk) {
                if let Some((_, old)) = chunks.chunks.pop_front() {
                    chunks.bytes -= old.charge;
                    self.bytes -= old.charge;
                    self.live -= 1;
                }
                return true;
            }
        }
        false
    }

    /// Drops entries of chunks that are gone once they outnumber the live ones, so the order
    /// queue stays proportional to what is cached.
    fn compact_order(&mut self) {
        if self.order.len() <= 2 * self.live + 64 {
            return;
        }
        let logs = &self.logs;
        self.order.retain(|(log, chunk)| {
            logs.get(log)
                .is_some_and(|l| l.chunks.iter().any(|(id, _)| id == chunk))
        });
    }

    fn clear_log(&mut self, log: u64) {
        if let Some(chunks) = self.logs.get_mut(&log) {
            self.bytes -= chunks.bytes;
            self.live -= chunks.chunks.len();
            chunks.bytes = 0;
            chunks.chunks.clear();
        }
    }
}

thread_local! {
    static SHARD_CACHE: RefCell<ShardCache> = RefCell::new(ShardCache {
        logs: HashMap::new(),
        order: VecDeque::new(),
        live: 0,
        bytes: 0,
        bytes_max: crate::limits::SHARD_CACHE_BYTES_MAX,
        next_log: 0,
        next_chunk: 0,
    });
}

/// Bytes held by the tail caches of every log on this shard (thread).
pub fn shard_cache_bytes() -> usize {
    SHARD_CACHE.with(|c| c.borrow().bytes)
}

/// Changes this shard's cache budget (tests and benchmarks; the broker uses
/// `limits::SHARD_CACHE_BYTES_MAX`), evicting down to it.
pub fn set_shard_cache_bytes_max(bytes_max: usize) {
    SHARD_CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        cache.bytes_max = bytes_max;
        while cache.bytes > cache.bytes_max && cache.evict_oldest() {}
    });
}

/// One log's view of the shard-wide tail cache: its own chunks, bounded by `bytes_max` and by
/// the shard's budget. Dropping it releases the log's chunks.
#[derive(Debug)]
pub struct BatchCache {
    id: u64,
}

impl Drop for BatchCache {
    fn drop(&mut self) {
        let id = self.id;
        // During thread teardown the cache may already be gone: nothing left to release.
        let _ = SHARD_CACHE.try_with(|c| {
            let mut cache = c.borrow_mut();
            cache.clear_log(id);
            cache.logs.remove(&id);
        });
    }
}

impl BatchCache {
    pub fn new(bytes_max: usize) -> BatchCache {
        SHARD_CACHE.with(|c| {
            let mut cache = c.borrow_mut();
            let id = cache.next_log;
            cache.next_log += 1;
            cache.logs.insert(
                id,
                LogChunks {
                    bytes_max,
                    ..LogChunks::default()
                },
            );
            BatchCache { id }
        })
    }

    fn with<T>(&self, f: impl FnOnce(&LogChunks) -> T) -> T {
        SHARD_CACHE.with(|c| {
            let cache = c.borrow();
            match cache.logs.get(&self.id) {
                Some(chunks) => f(chunks),
                None => f(&LogChunks::default()),
            }
        })
    }

    pub fn bytes(&self) -> usize {
        self.with(|l| l.bytes)
    }

    /// Adds the chunk written after every chunk already held, then evicts: this log's oldest
    /// beyond its own bound, the shard's oldest beyond the shard's budget.
    pub fn push(&mut self, chunk: Chunk) {
        if chunk.batches.is_empty() {
            return;
        }
        SHARD_CACHE.with(|c| {
            let mut cache = c.borrow_mut();
            let contiguous = cache.logs.get(&self.id).is_none_or(|l| {
                l.chunks
                    .back()
                    .is_none_or(|(_, last)| last.next_offset() == chunk.first_offset())
            });
            if !contiguous {
                cache.clear_log(self.id); // Not contiguous (after a truncation): start over.
            }
            let chunk_id = cache.next_chunk;
            cache.next_chunk += 1;
            let charge = chunk.charge;
            cache.bytes += charge;
            cache.order.push_back((self.id, chunk_id));
            let cache = &mut *cache;
            if let Some(log) = cache.logs.get_mut(&self.id) {
                log.bytes += charge;
                log.chunks.push_back((chunk_id, Rc::new(chunk)));
                cache.live += 1;
                while log.bytes > log.bytes_max {
                    match log.chunks.pop_front() {
                        Some((_, old)) => {
                            log.bytes -= old.charge;
                            cache.bytes -= old.charge;
                            cache.live -= 1;
                        }
                        None => break,
                    }
                }
            }
            while cache.bytes > cache.bytes_max && cache.evict_oldest() {}
            cache.compact_order();
        });
    }

    /// The first offset held, if any.
    pub fn first_offset(&self) -> Option<u64> {
        self.with(|l| l.chunks.front().map(|(_, c)| c.first_offset()))
    }

    pub fn clear(&mut self) {
        SHARD_CACHE.with(|c| c.borrow_mut().clear_log(self.id));
    }

    /// Whole batches from the one containing `offset`, up to `max_bytes` (at least one batch)
    /// and ending at or before `end_offset`, or `None` when `offset` is not cached.
    pub fn read(&self, offset: u64, max_bytes: usize, end_offset: u64) -> Option<Vec<ChunkSlice>> {
        self.with(|log| read_chunks(&log.chunks, offset, max_bytes, end_offset))
    }
}

fn read_chunks(
    chunks: &VecDeque<(u64, Rc<Chunk>)>,
    offset: u64,
    max_bytes: usize,
    end_offset: u64,
) -> Option<Vec<ChunkSlice>> {
    let (_, first) = chunks.front()?;
    if offset < first.first_offset() {
        return None;
    }
    let at = chunks.partition_point(|(_, c)| c.next_offset() <= offset);
    let mut slices: Vec<ChunkSlice> = Vec::new();
    let mut total = 0usize;
    let mut expected = offset;
    let mut full = false;
    for (_, chunk) in chunks.iter().skip(at) {
        let from = chunk.batches.partition_point(|b| b.next_offset <= expected);
        let mut range: Option<Range<usize>> = None;
        for batch in &chunk.batches[from..] {
            let len = batch.len as usize;
            if batch.next_offset > end_offset {
                full = true;
                break;
            }
            if total > 0 && total + len > max_bytes {
                full = true;
                break;
            }
            let start = batch.start as usize;
            range = Some(match range {
                None => start..start + len,
                Some(r) => r.start..start + len,
            });
            total += len;
            expected = batch.next_offset;
        }
        match range {
            Some(range) => slices.push(ChunkSlice {
                chunk: Rc::clone(chunk),
                range,
            }),
            None => break,
        }
        if full || total >= max_bytes {
            break;
        }
    }
    if slices.is_empty() {
        None
    } else {
        Some(slices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(base: u64, records: u64, bytes: usize) -> Chunk {
        Chunk::new(
            ChunkBytes::Copied(CopiedBytes::of(&vec![0; bytes])),
            bytes,
            vec![CachedBatch {
                base_offset: base,
                next_offset: base + records,
                start: 0,
                len: bytes as u32,
            }],
        )
    }

    fn counted_and_real() -> (usize, usize) {
        SHARD_CACHE.with(|c| {
            let cache = c.borrow();
            let real = cache.logs.values().map(|l| l.chunks.len()).sum();
            (cache.live, real)
        })
    }

    /// The running count of held chunks (which bounds the order queue) stays the real count
    /// through pushes, a log's own bound, the shard's budget, truncations, clears and drops.
    #[test]
    fn the_live_chunk_count_follows_every_change() {
        set_shard_cache_bytes_max(64 << 10);
        let mut logs: Vec<BatchCache> = (0..50).map(|_| BatchCache::new(8 << 10)).collect();
        let mut next = [0u64; 50];
        for round in 0..400u64 {
            let i = (round * 7 % 50) as usize;
            // Every 37th push skips ahead (a truncation elsewhere): the log starts over.
            if round % 37 == 36 {
                next[i] += 5;
            }
            logs[i].push(chunk(next[i], 3, 1024 + (round as usize % 5) * 512));
            next[i] += 3;
            if round % 53 == 52 {
                logs[(round % 50) as usize].clear();
            }
            if round % 101 == 100 {
                logs.swap_remove(0);
                next.rotate_left(1);
                logs.push(BatchCache::new(8 << 10));
                next[49] = 0;
            }
            let (counted, real) = counted_and_real();
            assert_eq!(counted, real, "after push {round}");
            SHARD_CACHE.with(|c| {
                let cache = c.borrow();
                assert!(cache.order.len() <= 2 * cache.live + 65);
                assert!(cache.bytes <= cache.bytes_max);
            });
        }
        drop(logs);
        assert_eq!(counted_and_real(), (0, 0));
        set_shard_cache_bytes_max(crate::limits::SHARD_CACHE_BYTES_MAX);
    }
    /// Small copies come from size classes and go back to the shard's pool when dropped, to be
    /// handed out again; the pool keeps at most its bound; large copies are exact and unpooled.
    #[test]
    fn small_copies_are_reused_within_the_pool_bound() {
        // Each test runs on its own thread: the pool starts empty.
        assert_eq!(shard_copy_pool_bytes(), 0);
        let first = CopiedBytes::of(&[7; 1_500]);
        assert_eq!(first.as_bytes(), &[7; 1_500][..]);
        assert_eq!(first.capacity(), 2 << 10, "rounded up to its class");
        let address = first.buf.as_ptr();
        drop(first);
        assert_eq!(shard_copy_pool_bytes(), 2 << 10);
        let second = CopiedBytes::of(&[9; 2_000]);
        assert_eq!(
            second.buf.as_ptr(),
            address,
            "the pooled copy is handed out again"
        );
        assert_eq!(second.as_bytes(), &[9; 2_000][..]);
        assert_eq!(shard_copy_pool_bytes(), 0);
        assert_eq!(CopiedBytes::of(&[1; 40_000]).capacity(), 64 << 10);
        let large = CopiedBytes::of(&vec![3; (64 << 10) + 1]);
        assert_eq!(
            large.capacity(),
            (64 << 10) + 1,
            "beyond the classes: exact"
        );
        drop(large);
        assert_eq!(
            shard_copy_pool_bytes(),
            64 << 10,
            "only the class-sized copy returned"
        );
        let many: Vec<CopiedBytes> = (0..2 * crate::limits::SHARD_COPY_POOL_BYTES_MAX / (64 << 10))
            .map(|_| CopiedBytes::of(&[0; 60_000]))
            .collect();
        drop(many);
        assert_eq!(
            shard_copy_pool_bytes(),
            crate::limits::SHARD_COPY_POOL_BYTES_MAX,
            "the pool keeps no more than its bound"
        );
        drop(second);
    }
}
