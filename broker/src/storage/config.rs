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

/// What happens to old data: Kafka's `cleanup.policy` (a topic setting, so it is also part of
/// the replicated metadata).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum CleanupPolicy {
    /// `delete`: retention deletes whole sealed segments by age or size. Records may lack keys.
    #[default]
    Delete,
    /// `compact`: compaction keeps the latest record of every key; retention deletes nothing.
    /// Every record must have a key.
    Compact,
    /// `compact,delete`: both; retention still deletes whole segments past its limits.
    CompactDelete,
}

impl CleanupPolicy {
    /// Whether compaction runs (and appends of keyless records are refused).
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    /// Kafka's name of the policy.
    pub fn name(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    /// Parses Kafka's names (`delete`, `compact`, `compact,delete` in either order).
    pub fn from_name(name: &str) -> Option<CleanupPolicy> {
        let mut parts: Vec<&str> = name.split(',').map(str::trim).collect();
        parts.sort_unstable();
        parts.dedup();
        match parts.as_slice() {
            ["delete"] => Some(CleanupPolicy::Delete),
            ["compact"] => Some(CleanupPolicy::Compact),
            ["compact", "delete"] => Some(CleanupPolicy::CompactDelete),
            _ => None,
        }
    }

    /// Whether retention deletes segments by age or size.
    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }
}

/// One partition log's settings. Topic settings map onto them as Kafka names them:
/// `segment.bytes` → `segment_bytes_max`, `segment.ms` → `segment_age_max`, `retention.ms` →
/// `retention_ms`, `retention.bytes` → `retention_bytes`, `max.message.bytes` →
/// `batch_bytes_max`, `cleanup.policy` → `cleanup_policy` (`delete`, `compact`, or both),
/// `min.cleanable.dirty.ratio` → `compact_dirty_percent_min` (the ratio × 100),
/// `delete.retention.ms` → `delete_retention`.
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
    /// Whether old data is deleted by retention, compacted, or both.
    pub cleanup_policy: CleanupPolicy,
    /// The background cleaner compacts once the sealed segments not yet cleaned hold at least
    /// this percentage of the sealed bytes (Kafka's `min.cleanable.dirty.ratio` × 100, default
    /// 50). `PartitionLog::compact` runs a pass whatever this says.
    pub compact_dirty_percent_min: u8,
    /// How long a tombstone (a record with a null value) stays readable after the cleaning
    /// that first saw it (Kafka's `delete.retention.ms`, default 24 h): consumers that read
    /// the log within this long see the deletion.
    pub delete_retention: Duration,
    /// Keys one compaction pass can hold in its key → offset map; a pass cleans as many
    /// segments as the map covers. At most `limits::COMPACTION_KEYS_MAX`.
    pub compaction_keys_max: usize,
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
            cleanup_policy: CleanupPolicy::Delete,
            compact_dirty_percent_min: 50,
            delete_retention: Duration::from_secs(24 * 3600),
            compaction_keys_max: limits::COMPACTION_KEYS_MAX,
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
        if self.compact_dirty_percent_min > 100 {
            return fail(format!(
                "compact_dirty_percent_min {} is above 100",
                self.compact_dirty_percent_min
            ));
        }
        if self.compaction_keys_max == 0 || self.compaction_keys_max > limits::COMPACTION_KEYS_MAX {
            return fail(format!(
                "compaction_keys_max {} is not in 1..={}",
                self.compaction_keys_max,
                limits::COMPACTION_KEYS_MAX
            ));
        }
        if let FlushPolicy::Interval { interval, bytes } = self.flush {
            if interval.is_zero() || bytes == 0 {
                return fail("a flush interval needs a positive time and byte window".into());
            }
        }
        Ok(())
    }
}
