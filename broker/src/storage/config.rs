//! Configuration of one partition log, with its defaults and its validation.

use std::time::Duration;

use super::error::{Result, StorageError};
use crate::limits;

/// When appended data is made durable (fdatasync) and acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Flush as soon as data is written. Appends that arrive while a flush is running share the
    /// next one (group commit with no waiting window): the latency mode's policy. The active
    /// segment is opened `O_DSYNC`, so each flush is one write that returns once durable
    /// instead of a write and an fdatasync (one completion, no io_uring worker-thread hop).
    Always,
    /// Group commit: one flush covers every append made within `interval` of the oldest
    /// unflushed one, or as soon as `bytes` are waiting. The throughput mode's policy.
    Interval { interval: Duration, bytes: u64 },
    /// Write to the device, never fdatasync; appends are acknowledged once buffered.
    Never,
}

impl FlushPolicy {
    pub(crate) fn syncs(&self) -> bool {
        !matches!(self, FlushPolicy::Never)
    }

    /// Whether the active segment is written through (`O_DSYNC`) instead of fdatasynced.
    pub(crate) fn writes_through(&self) -> bool {
        matches!(self, FlushPolicy::Always)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment before it grows past this size.
    pub segment_bytes_max: u64,
    /// Roll the active segment once it has been active this long (and holds data).
    pub segment_age_max: Option<Duration>,
    /// Delete sealed segments whose newest record is older than this.
    pub retention_ms: Option<Duration>,
    /// Delete the oldest sealed segments while the partition is larger than this.
    pub retention_bytes: Option<u64>,
    pub flush: FlushPolicy,
    /// Largest batch accepted by `append`.
    pub batch_bytes_max: usize,
    /// One sparse-index entry per this many bytes of log.
    pub index_interval_bytes: u32,
    /// Capacity of one write buffer; two are in use at most (one filling, one being written).
    pub write_buffer_bytes: usize,
    /// Bytes of recently written batches kept in memory for tail reads.
    pub cache_bytes_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_age_max: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_ms: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            flush: FlushPolicy::Interval {
                interval: Duration::from_millis(5),
                bytes: 4 << 20,
            },
            batch_bytes_max: 1 << 20,
            index_interval_bytes: 64 << 10,
            write_buffer_bytes: 8 << 20,
            cache_bytes_max: 64 << 20,
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<()> {
        let fail = |why: String| Err(StorageError::Config(why));
        if self.batch_bytes_max < sluice_protocol::BATCH_HEADER_BYTES {
            return fail(format!(
                "batch_bytes_max {} is below the batch header size",
                self.batch_bytes_max
            ));
        }
        if self.batch_bytes_max > limits::BATCH_BYTES_MAX {
            return fail(format!(
                "batch_bytes_max {} exceeds the limit {}",
                self.batch_bytes_max,
                limits::BATCH_BYTES_MAX
            ));
        }
        if self.write_buffer_bytes < self.batch_bytes_max + limits::DMA_ALIGNMENT as usize {
            return fail(format!(
                "write_buffer_bytes {} must exceed batch_bytes_max {} by at least one block",
                self.write_buffer_bytes, self.batch_bytes_max
            ));
        }
        if self.write_buffer_bytes > limits::WRITE_BUFFER_BYTES_MAX {
            return fail(format!(
                "write_buffer_bytes {} exceeds the limit {}",
                self.write_buffer_bytes,
                limits::WRITE_BUFFER_BYTES_MAX
            ));
        }
        if self.segment_bytes_max < self.batch_bytes_max as u64 {
            return fail(format!(
                "segment_bytes_max {} is smaller than batch_bytes_max {}",
                self.segment_bytes_max, self.batch_bytes_max
            ));
        }
        if self.segment_bytes_max > limits::SEGMENT_BYTES_MAX {
            return fail(format!(
                "segment_bytes_max {} exceeds the limit {} (index positions are 32-bit)",
                self.segment_bytes_max,
                limits::SEGMENT_BYTES_MAX
            ));
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes must be positive".into());
        }
        if let FlushPolicy::Interval { interval, bytes } = self.flush {
            if interval.is_zero() || bytes == 0 {
                return fail("a flush interval needs a positive time and byte window".into());
            }
        }
        Ok(())
    }
}
