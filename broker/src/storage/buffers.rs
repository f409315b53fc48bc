//! Write buffers drawn on demand from a shard's budget.
//!
//! An active segment holds no write buffer while it has nothing unflushed: one is taken when an
//! append arrives and handed to the disk with the flush, so a quiet partition costs no buffer
//! memory (only its carried partial block, under 4 KiB). Buffers come from the shard's
//! registered I/O memory (glommio's pool; the system allocator when it is exhausted). Each log
//! sizes its next buffer by what its last flushes held ([`BufferSizer`]), from
//! `limits::WRITE_BUFFER_BYTES_MIN` up to its configured `write_buffer_bytes`; and the shard's
//! buffers waiting for a flush are kept within `limits::SHARD_WRITE_BUFFER_BYTES_MAX`: beyond
//! it a log gets a buffer just big enough for the batch in hand. Memory for writes thus grows
//! with the data in flight, not with the partition count.

use std::cell::Cell;

use glommio::io::{DmaBuffer, DmaFile};

use crate::limits::{DMA_ALIGNMENT, SHARD_WRITE_BUFFER_BYTES_MAX, WRITE_BUFFER_BYTES_MIN};

thread_local! {
    /// Capacity of the write buffers held by this shard's active segments.
    static HELD_BYTES: Cell<usize> = const { Cell::new(0) };
}

/// Bytes of write buffers this shard's active segments hold (waiting for their flush).
pub fn shard_write_buffer_bytes() -> usize {
    HELD_BYTES.with(Cell::get)
}

fn align_up(value: usize) -> usize {
    let a = DMA_ALIGNMENT as usize;
    value.div_ceil(a) * a
}

/// A write buffer charged to the shard's budget until it is handed to a flush or dropped.
#[derive(Debug)]
pub struct WriteBuffer {
    buf: Option<DmaBuffer>,
    capacity: usize,
}

impl WriteBuffer {
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.as_bytes())
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut().map_or(&mut [], |b| b.as_bytes_mut())
    }

    /// Hands the buffer to a flush: it no longer counts against the budget.
    pub fn into_dma(mut self) -> DmaBuffer {
        HELD_BYTES.with(|h| h.set(h.get() - self.capacity));
        self.capacity = 0;
        match self.buf.take() {
            Some(buf) => buf,
            None => unreachable!("a write buffer holds its DMA buffer until handed over"),
        }
    }
}

impl Drop for WriteBuffer {
    fn drop(&mut self) {
        if self.capacity > 0 {
            let _ = HELD_BYTES.try_with(|h| h.set(h.get() - self.capacity));
        }
    }
}

/// How big a log's next write buffer is: doubled after a flush that found the buffer full,
/// halved after one that used less than a quarter of it.
#[derive(Debug, Clone, Copy)]
pub struct BufferSizer {
    hint: usize,
    max: usize,
}

impl BufferSizer {
    pub fn new(max: usize) -> BufferSizer {
        BufferSizer {
            hint: WRITE_BUFFER_BYTES_MIN.min(max),
            max,
        }
    }

    /// Adapts to a flush of `used` bytes out of a buffer of `capacity`; `overflowed` when an
    /// append found it full.
    pub fn observe(&mut self, used: usize, capacity: usize, overflowed: bool) {
        if overflowed {
            self.hint = (capacity * 2).clamp(WRITE_BUFFER_BYTES_MIN, self.max);
        } else if used * 4 < capacity {
            self.hint = (capacity / 2).clamp(WRITE_BUFFER_BYTES_MIN.min(self.max), self.max);
        }
    }

    /// Takes a buffer for `needed` bytes (the carried block and the batch to append), from
    /// `file`'s reactor: the size hint if the shard's budget allows it, else just `needed`.
    pub fn take(&self, file: &DmaFile, needed: usize) -> WriteBuffer {
        let least = align_up(needed + DMA_ALIGNMENT as usize);
        let held = shard_write_buffer_bytes();
        let wanted = align_up(self.hint).max(least);
        let capacity = if held + wanted <= SHARD_WRITE_BUFFER_BYTES_MAX {
            wanted
        } else {
            least
        };
        HELD_BYTES.with(|h| h.set(h.get() + capacity));
        WriteBuffer {
            buf: Some(file.alloc_dma_buffer(capacity)),
            capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_follows_the_flushes() {
        let mut sizer = BufferSizer::new(8 << 20);
        assert_eq!(sizer.hint, WRITE_BUFFER_BYTES_MIN);
        sizer.observe(WRITE_BUFFER_BYTES_MIN, WRITE_BUFFER_BYTES_MIN, true);
        assert_eq!(sizer.hint, 2 * WRITE_BUFFER_BYTES_MIN);
        for _ in 0..20 {
            sizer.observe(sizer.hint, sizer.hint, true);
        }
        assert_eq!(sizer.hint, 8 << 20, "bounded by the configured size");
        for _ in 0..20 {
            sizer.observe(100, sizer.hint, false);
        }
        assert_eq!(
            sizer.hint, WRITE_BUFFER_BYTES_MIN,
            "and falls back when quiet"
        );
    }
}
