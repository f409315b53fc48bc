//! The tail cache: batches recently written to disk, kept in memory for tail consumers.
//!
//! Each flush hands its buffer over as one [`Chunk`]; large buffers are shared with the write
//! (the very bytes that went to disk), small ones are copied to a right-sized allocation so a
//! burst of tiny flushes does not pin many large buffers. Reads borrow ranges of chunks: no
//! record bytes are copied. The cache is bounded by `cache_bytes_max` and evicts oldest first.

use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;

use glommio::io::DmaBuffer;

/// Memory behind a chunk.
#[derive(Debug)]
pub enum ChunkBytes {
    Shared(Rc<DmaBuffer>),
    Copied(Box<[u8]>),
}

impl ChunkBytes {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ChunkBytes::Shared(buf) => buf.as_bytes(),
            ChunkBytes::Copied(bytes) => bytes,
        }
    }
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

#[derive(Debug)]
pub struct BatchCache {
    chunks: VecDeque<Rc<Chunk>>,
    bytes: usize,
    bytes_max: usize,
}

impl BatchCache {
    pub fn new(bytes_max: usize) -> BatchCache {
        BatchCache {
            chunks: VecDeque::new(),
            bytes: 0,
            bytes_max,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds the chunk written after every chunk already held.
    pub fn push(&mut self, chunk: Chunk) {
        if chunk.batches.is_empty() {
            return;
        }
        if let Some(last) = self.chunks.back() {
            if last.next_offset() != chunk.first_offset() {
                self.clear(); // Not contiguous (after a truncation): start over.
            }
        }
        self.bytes += chunk.charge;
        self.chunks.push_back(Rc::new(chunk));
        while self.bytes > self.bytes_max {
            match self.chunks.pop_front() {
                Some(old) => self.bytes -= old.charge,
                None => break,
            }
        }
    }

    /// The first offset held, if any.
    pub fn first_offset(&self) -> Option<u64> {
        self.chunks.front().map(|c| c.first_offset())
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }

    /// Whole batches from the one containing `offset`, up to `max_bytes` (at least one batch)
    /// and ending at or before `end_offset`, or `None` when `offset` is not cached.
    pub fn read(&self, offset: u64, max_bytes: usize, end_offset: u64) -> Option<Vec<ChunkSlice>> {
        let first = self.chunks.front()?;
        if offset < first.first_offset() {
            return None;
        }
        let at = self.chunks.partition_point(|c| c.next_offset() <= offset);
        let mut slices: Vec<ChunkSlice> = Vec::new();
        let mut total = 0usize;
        let mut expected = offset;
        let mut full = false;
        for chunk in self.chunks.iter().skip(at) {
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
}
