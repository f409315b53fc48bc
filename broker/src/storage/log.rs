//! [`PartitionLog`]: one partition's segments, appends with group commit, reads, retention,
//! truncation and recovery.
//!
//! A partition log lives on exactly one shard (glommio executor) and is never shared across
//! threads: its state sits in a `RefCell` that is never borrowed across an `.await`.
//!
//! Write path: `append` validates the batch, copies it into the active segment's write buffer
//! (stamping its offsets) and returns the assigned offsets; `wait_durable` then waits for the
//! flush that covers them. One flusher task per log turns many appends into one DMA write and
//! one fdatasync, as the [`FlushPolicy`] says. Flushes, rolls, truncations and retention are
//! serialized by one lock; appends wait (backpressure) while the write buffer is full or a roll
//! or truncation rebuilds the segments.
//!
//! Read path: consumers see offsets below the *high watermark*; replicas fetching from a leader
//! see offsets below the *durable end*: data that a crash cannot take back (for
//! `FlushPolicy::Never`, data written to the device). An unreplicated log's high watermark is its
//! durable end; a replicated one's is set by replication ([`PartitionLog::set_high_watermark`]:
//! the durable end every in-sync replica has reached), never above the durable end. Tail reads
//! are served from the [`BatchCache`], others from the segment files with their CRCs checked.
//!
//! Replication support: [`PartitionLog::append_replica`] appends a leader's batch with its
//! offsets and epoch as they are; the log keeps its leader-epoch history ([`EpochHistory`],
//! checkpointed to `leader-epoch-checkpoint` before the data of a new epoch is reported
//! durable) so a leader can answer where an epoch ends ([`PartitionLog::end_of_epoch`]) and a
//! follower can cut a divergent tail ([`PartitionLog::truncate_to`]); the high watermark is
//! checkpointed to `high-watermark` when asked.

use crate::metrics::histogram::{
    HistogramSnapshot, LocalHistogram, LATENCY_BOUNDS_SECONDS, SIZE_BOUNDS_BYTES,
};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use glommio::io::{DmaFile, ReadResult};
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;
use sluice_protocol::batch::{validate, validate_frame, BatchHeader};
use sluice_protocol::BatchError;
use sluice_protocol::{BatchIter, Compression, RecordIter, BATCH_HEADER_BYTES};

use super::cache::{BatchCache, Chunk, ChunkBytes, ChunkSlice};
use super::config::{FlushPolicy, LogConfig};
use super::epochs::{EpochEnd, EpochHistory, EpochStart};
use super::error::{io_error, Result, StorageError};
use super::index::SegmentIndex;
use super::marker::MARKER_FILE;
use super::scan::parse_segment_file_name;
use super::segment::{
    find_batch_position, locate_batches, read_batches, read_small_file, remove_if_exists,
    replace_file, replace_file_unsynced, seal_failpoint, sync_dir, ActiveSegment, ExtendBy,
    FlushJob, LocateQuery, Padding, ReadStart, SealStep, SealedSegment, SegmentPaths, Stamp,
    TailRecovery,
};
use crate::limits::SEGMENTS_PER_PARTITION_MAX;
use crate::notify::Notify;

mod cleaner;

pub use cleaner::{CompactionReport, SwapStep};

/// How often `FlushPolicy::Never` hands buffered data to the device.
const WRITE_BEHIND_INTERVAL: Duration = Duration::from_millis(10);
/// The leader-epoch history's file in the partition directory (format: [`EpochHistory`]).
const EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
/// The high watermark's checkpoint: `[u64 offset][u32 CRC-32C of the offset]`, little-endian.
const HIGH_WATERMARK_FILE: &str = "high-watermark";

/// How far a read may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBound {
    /// What consumers see: offsets below the high watermark.
    HighWatermark,
    /// What a follower replica fetches: everything durable on this replica.
    DurableEnd,
}

/// Offsets assigned to an appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
}

/// What opening a log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub log_start: u64,
    pub log_end: u64,
    /// What was cut from the active segment's tail.
    pub tail: TailRecovery,
    /// Whether the active segment was scanned; not when a clean-shutdown marker gave its index.
    pub scanned: bool,
}

/// Where to start a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// The first offset whose record timestamp is at or after this (ms).
    Timestamp(i64),
}

/// A piece of a read: bytes of whole batches, borrowed from the cache or a disk read.
#[derive(Debug, Clone)]
pub enum ReadChunk {
    Cached(ChunkSlice),
    Disk(ReadResult),
}

impl ReadChunk {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ReadChunk::Cached(slice) => slice.as_bytes(),
            ReadChunk::Disk(result) => result,
        }
    }
}

/// The answer to a read: whole batches, in offset order.
#[derive(Debug, Clone, Default)]
pub struct ReadBatches {
    pub chunks: Vec<ReadChunk>,
    /// The durable end of the log when the read was served.
    pub high_watermark: u64,
    pub log_start: u64,
    /// Whether the bytes came from the tail cache.
    pub from_cache: bool,
}

impl ReadBatches {
    pub fn len_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.as_bytes().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Copies the batches into one buffer (tests and tools; the data path writes the chunks).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len_bytes());
        for chunk in &self.chunks {
            out.extend_from_slice(chunk.as_bytes());
        }
        out
    }
}

/// Whole batches in a segment file, to be sent from the file: the open file keeps the bytes
/// readable even if retention deletes the segment meanwhile.
#[derive(Debug, Clone)]
pub struct FileRange {
    pub file: Rc<DmaFile>,
    pub position: u64,
    pub len: usize,
}

/// A piece of a read for sending: bytes in memory, or a span of a segment file.
#[derive(Debug, Clone)]
pub enum SendChunk {
    Memory(ReadChunk),
    File(FileRange),
}

impl SendChunk {
    pub fn len(&self) -> usize {
        match self {
            SendChunk::Memory(chunk) => chunk.as_bytes().len(),
            SendChunk::File(range) => range.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The answer to [`PartitionLog::read_for_send`].
#[derive(Debug, Clone, Default)]
pub struct SendRead {
    pub chunks: Vec<SendChunk>,
    pub high_watermark: u64,
    pub log_start: u64,
}

impl From<ReadBatches> for SendRead {
    fn from(read: ReadBatches) -> SendRead {
        SendRead {
            chunks: read.chunks.into_iter().map(SendChunk::Memory).collect(),
            high_watermark: read.high_watermark,
            log_start: read.log_start,
        }
    }
}

impl SendRead {
    pub fn len_bytes(&self) -> usize {
        self.chunks.iter().map(SendChunk::len).sum()
    }
}

/// What a read must fetch from a segment file.
struct DiskRead {
    /// The segment's file: the active segment's, or a sealed one's once opened
    /// ([`PartitionLog::plan_read_open`]).
    file: Option<Rc<DmaFile>>,
    /// The base offset of the sealed segment to open.
    sealed_base: Option<u64>,
    path: PathBuf,
    start: ReadStart,
    readable: u64,
    /// The read's bound falls inside this segment: the offset to stop at, and the indexed
    /// position to look for its batch from.
    bound_in_segment: Option<(u64, u64)>,
    interval: u32,
    high_watermark: u64,
    log_start: u64,
    /// Indexed batch starts a read may end at.
    boundaries: Vec<u64>,
    /// Whether the segment is sealed (no write will touch its bytes again).
    sealed: bool,
}

impl DiskRead {
    fn file(&self) -> &Rc<DmaFile> {
        match &self.file {
            Some(file) => file,
            None => panic!("a disk read's file is opened before the read"),
        }
    }

    /// Narrows `readable` to end where the read's bound falls, when it falls in this segment
    /// (a replicated log's high watermark below the segment's end): one header walk of at most
    /// an index interval.
    async fn apply_bound(&mut self) -> Result<()> {
        if let Some((end_offset, from)) = self.bound_in_segment.take() {
            self.readable =
                find_batch_position(self.file(), &self.path, from, self.readable, end_offset)
                    .await?;
            self.boundaries.retain(|&b| b <= self.readable);
        }
        Ok(())
    }
}

enum ReadPlan {
    Done(ReadBatches),
    Disk(DiskRead),
}

/// Counters of one log since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub appends: u64,
    /// DMA writes issued by flushes.
    pub writes: u64,
    /// fdatasync calls issued by flushes.
    pub syncs: u64,
    /// Bytes handed to the device, padding and rewritten partial blocks included.
    pub bytes_written: u64,
    /// Time spent in DMA writes issued by flushes, in µs.
    pub write_us: u64,
    /// Time spent in fdatasync issued by flushes, in µs.
    pub sync_us: u64,
    /// Segment rolls, and the time appends were held while they ran, in µs.
    pub rolls: u64,
    pub roll_us: u64,
    /// Reads answered from the tail cache, and reads that went to a segment file.
    pub cache_hits: u64,
    pub disk_reads: u64,
}

/// Distributions of one log's flushes since it was opened (what `LogStats` sums).
#[derive(Debug, Clone, PartialEq)]
pub struct FlushHistograms {
    /// Bytes of each flush's DMA write.
    pub bytes: HistogramSnapshot,
    /// Seconds of each flush's DMA write.
    pub write_seconds: HistogramSnapshot,
    /// Seconds of each fdatasync.
    pub sync_seconds: HistogramSnapshot,
}

#[derive(Debug)]
struct FlushObserver {
    bytes: LocalHistogram,
    write_seconds: LocalHistogram,
    sync_seconds: LocalHistogram,
}

impl Default for FlushObserver {
    fn default() -> Self {
        FlushObserver {
            bytes: LocalHistogram::new(SIZE_BOUNDS_BYTES),
            write_seconds: LocalHistogram::new(LATENCY_BOUNDS_SECONDS),
            sync_seconds: LocalHistogram::new(LATENCY_BOUNDS_SECONDS),
        }
    }
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start: u64,
}

#[derive(Debug)]
struct LogState {
    sealed: VecDeque<SealedSegment>,
    active: ActiveSegment,
    cache: BatchCache,
    log_start: u64,
    /// Offsets below this are durable per the flush policy.
    durable_end: u64,
    /// Set by replication; `None` for a log whose high watermark is its durable end.
    replicated_high_watermark: Option<u64>,
    /// The value in the high watermark's checkpoint file, if there is one.
    high_watermark_checkpointed: Option<u64>,
    epochs: EpochHistory,
    /// `epochs` changed since its checkpoint was written.
    epochs_dirty: bool,
    /// A roll or truncation is replacing segments: appends wait.
    exclusive: bool,
    /// An append is waiting for buffer space: flush now.
    starved: bool,
    first_unflushed_at: Option<Instant>,
    failed: Option<String>,
    closed: bool,
    /// A roll's background seal of the newest sealed segment is under way.
    sealing: bool,
    /// The clean-shutdown marker was deleted on open and the directory not synced since: the
    /// next flush syncs it before writing.
    marker_removed_unsynced: bool,
    /// Compaction: offsets below this were cleaned by a pass (in memory only: a reopened log
    /// counts everything as dirty, so its first pass cleans the whole log).
    clean_end: u64,
    /// Compaction: the earliest delete horizon of the tombstones the last pass kept.
    tombstone_horizon_min: Option<i64>,
}

impl LogState {
    fn usable(&self) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(StorageError::Failed(why.clone()));
        }
        if self.closed {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// What consumers may read up to: never past the durable end.
    fn high_watermark(&self) -> u64 {
        self.replicated_high_watermark
            .map_or(self.durable_end, |hw| hw.min(self.durable_end))
    }

    fn bound(&self, bound: ReadBound) -> u64 {
        match bound {
            ReadBound::HighWatermark => self.high_watermark(),
            ReadBound::DurableEnd => self.durable_end,
        }
    }

    fn total_bytes(&self) -> u64 {
        self.sealed
            .iter()
            .map(|s| s.index().size_bytes())
            .sum::<u64>()
            + self.active.index().size_bytes()
    }
}

#[derive(Debug)]
struct LogInner {
    /// This opened log's id on its shard (keys its sealed files in the descriptor cache).
    id: u64,
    dir: PathBuf,
    config: LogConfig,
    state: RefCell<LogState>,
    /// Serializes flushes, rolls, truncation and retention.
    flush_lock: Semaphore,
    /// Serializes the work that replaces or deletes sealed segments: compaction (held for a
    /// whole pass, without the flush lock), retention and truncation (taken before the flush
    /// lock, never after it).
    maintenance_lock: Semaphore,
    /// `close` was called: a compaction pass stops at its next step.
    closing: std::cell::Cell<bool>,
    /// Data was appended (wakes the flusher).
    appended: Notify,
    /// The durable end moved, or the log failed or closed (wakes durability waiters).
    flushed: Notify,
    /// Write-buffer space was freed or a roll finished (wakes blocked appenders).
    space: Notify,
    /// A background seal finished (wakes [`PartitionLog::wait_sealed`]).
    sealed_now: Notify,
    flusher: RefCell<Option<JoinHandle<()>>>,
    stats: std::cell::Cell<LogStats>,
    flushes: FlushObserver,
    /// Retention limits (time, bytes): the configuration's at open, changed by
    /// [`PartitionLog::set_retention`] when the topic's settings change.
    retention: std::cell::Cell<(Option<Duration>, Option<u64>)>,
    /// The device of the file system holding the log (its sync rounds'), once first synced.
    device: std::cell::Cell<Option<u64>>,
}

/// One partition's log. Cheap to clone; every clone is the same log. Lives on one shard.
#[derive(Debug, Clone)]
pub struct PartitionLog {
    inner: Rc<LogInner>,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering it: sealed segments are opened from
    /// their indexes (rebuilt when missing or damaged), the active segment is scanned and cut
    /// at the first torn or corrupt batch.
    pub async fn open(
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<(PartitionLog, RecoveryReport)> {
        config.validate()?;
        let dir: PathBuf = dir.into();
        let dir = std::path::absolute(&dir).map_err(io_error("resolve", &dir))?;
        crate::shard::prime_dma_io(dir.parent().unwrap_or(&dir)).await?;
        let created = dir.clone();
        let existed = glommio::executor()
            .spawn_blocking(move || {
                let existed = created.is_dir();
                std::fs::create_dir_all(&created).map(|()| existed)
            })
            .await
            .map_err(io_error("create directory", &dir))?;
        if let (false, Some(parent)) = (existed, dir.parent()) {
            sync_dir(parent).await?;
        }
        let id = super::files::next_log_id();
        cleaner::recover(&dir, config.index_interval_bytes).await?;
        let bases = list_segments(&dir).await?;
        let interval = config.index_interval_bytes;
        // The clean-shutdown marker, if any, is read and deleted; the deletion is made durable
        // (a directory sync) before the log's first write, so a stale marker can never describe
        // a changed segment, and a start-up does not pay a sync per partition.
        // It was written through the page cache, and is read and deleted the same way: a
        // few µs, against four io_uring operations of a direct read.
        let marker_path = dir.join(MARKER_FILE);
        let marker = match std::fs::read(&marker_path) {
            Ok(bytes) => {
                std::fs::remove_file(&marker_path).map_err(io_error("remove", &marker_path))?;
                Some(bytes)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(io_error("read", &marker_path)(error)),
        };
        let mut sealed: VecDeque<SealedSegment> =
            VecDeque::with_capacity(bases.len().saturating_sub(1));
        for (i, &base) in bases.iter().enumerate().take(bases.len().saturating_sub(1)) {
            // The segment before the active one may be mid-seal (a roll seals in the
            // background): its zero padding is cut and its index files written now.
            let padding = if i + 2 == bases.len() {
                Padding::Cut
            } else {
                Padding::Refused
            };
            let segment = SealedSegment::open(id, &dir, base, interval, padding).await?;
            if let Some(previous) = sealed.back() {
                check_continuity(previous.index(), segment.index(), &segment.paths().log)?;
            }
            sealed.push_back(segment);
        }
        let clean_index = match (bases.last(), &marker) {
            (Some(&base), Some(bytes)) => {
                let path = SegmentPaths::new(&dir, base).log;
                let size = std::fs::metadata(&path)
                    .map_err(io_error("stat", &path))?
                    .len();
                match super::marker::decode(bytes, base, size) {
                    // The active segment's epochs are in the checkpoint a clean close left;
                    // without it (lost), only a scan can restore them.
                    Ok(index) if !index.is_empty() && !dir.join(EPOCH_CHECKPOINT_FILE).exists() => {
                        tracing::warn!(dir = %dir.display(), "no leader-epoch checkpoint: scanning the active segment despite its clean-shutdown marker");
                        None
                    }
                    Ok(index) => Some(index),
                    Err(why) => {
                        tracing::warn!(dir = %dir.display(), %why, "ignoring the clean-shutdown marker");
                        None
                    }
                }
            }
            _ => None,
        };
        let scanned = clean_index.is_none();
        let (active, tail, scanned_epochs) = match (bases.last(), clean_index) {
            (Some(_), Some(index)) => {
                let position = index.size_bytes();
                let active = ActiveSegment::reopen(
                    &dir,
                    index,
                    config.write_buffer_bytes,
                    config.flush.writes_through(),
                )
                .await?;
                let tail = TailRecovery {
                    truncated_bytes: 0,
                    padding_bytes: 0,
                    reason: None,
                    position,
                };
                (active, tail, Vec::new())
            }
            (Some(&base), None) => {
                ActiveSegment::recover(
                    &dir,
                    base,
                    interval,
                    config.write_buffer_bytes,
                    config.flush.writes_through(),
                )
                .await?
            }
            (None, _) => {
                let active = ActiveSegment::create(
                    &dir,
                    0,
                    interval,
                    config.write_buffer_bytes,
                    config.flush.writes_through(),
                )
                .await?;
                (
                    active,
                    TailRecovery {
                        truncated_bytes: 0,
                        padding_bytes: 0,
                        reason: None,
                        position: 0,
                    },
                    Vec::new(),
                )
            }
        };
        if let Some(previous) = sealed.back() {
            check_continuity(previous.index(), active.index(), &active.paths().log)?;
        }
        let log_start = sealed
            .front()
            .map_or(active.index().base_offset(), |s| s.index().base_offset());
        let log_end = active.index().next_offset();
        let (epochs, epochs_dirty) =
            recover_epochs(&dir, log_start, log_end, &scanned_epochs).await?;
        let high_watermark_checkpointed = read_high_watermark(&dir).await?;
        let replicated_high_watermark =
            high_watermark_checkpointed.map(|hw| hw.clamp(log_start, log_end));
        let report = RecoveryReport {
            segments: sealed.len() + 1,
            log_start,
            log_end,
            tail,
            scanned,
        };
        let state = LogState {
            sealed,
            active,
            cache: BatchCache::new(config.cache_bytes_max),
            log_start,
            durable_end: log_end,
            replicated_high_watermark,
            high_watermark_checkpointed,
            epochs,
            epochs_dirty,
            exclusive: false,
            starved: false,
            first_unflushed_at: None,
            failed: None,
            closed: false,
            sealing: false,
            marker_removed_unsynced: marker.is_some(),
            clean_end: log_start,
            tombstone_horizon_min: None,
        };
        let retention = std::cell::Cell::new((config.retention_ms, config.retention_bytes));
        let inner = Rc::new(LogInner {
            id,
            dir,
            config,
            state: RefCell::new(state),
            flush_lock: Semaphore::new(1),
            maintenance_lock: Semaphore::new(1),
            closing: std::cell::Cell::new(false),
            appended: Notify::new(),
            flushed: Notify::new(),
            space: Notify::new(),
            sealed_now: Notify::new(),
            flusher: RefCell::new(None),
            stats: Default::default(),
            flushes: FlushObserver::default(),
            retention,
            device: std::cell::Cell::new(None),
        });
        let flusher = glommio::spawn_local(flusher_loop(Rc::downgrade(&inner))).detach();
        *inner.flusher.borrow_mut() = Some(flusher);
        Ok((PartitionLog { inner }, report))
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// The first offset still in the log.
    pub fn log_start(&self) -> u64 {
        self.inner.state.borrow().log_start
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.inner.state.borrow().active.index().next_offset()
    }

    /// What consumers may read up to: the durable end for an unreplicated log; for a
    /// replicated one the high watermark replication set, capped at the durable end.
    pub fn high_watermark(&self) -> u64 {
        self.inner.state.borrow().high_watermark()
    }

    /// Offsets below this are durable on this replica per the flush policy: what a follower
    /// fetching from this log may read, and what this replica reports as caught up.
    pub fn durable_end(&self) -> u64 {
        self.inner.state.borrow().durable_end
    }

    /// Makes this a replicated log whose consumers read below `offset` (capped at the durable
    /// end). The high watermark never moves back except by truncation; a lower value is
    /// ignored. Wakes readers waiting for data when it moves.
    pub fn set_high_watermark(&self, offset: u64) {
        let mut state = self.inner.state.borrow_mut();
        let before = state.high_watermark();
        let current = state.replicated_high_watermark.unwrap_or(state.log_start);
        let end = state.active.index().next_offset();
        state.replicated_high_watermark = Some(offset.min(end).max(current));
        if state.high_watermark() != before {
            drop(state);
            self.inner.flushed.notify();
        }
    }

    /// Makes the high watermark follow the durable end again (a leader alone in its in-sync set:
    /// everything durable on it is committed).
    pub fn follow_durable_end(&self) {
        let mut state = self.inner.state.borrow_mut();
        let before = state.high_watermark();
        state.replicated_high_watermark = None;
        if state.high_watermark() != before {
            drop(state);
            self.inner.flushed.notify();
        }
    }

    /// Wakes every task waiting for the durable end or the high watermark to move, so it looks
    /// again at what it waits on (replication: this replica stopped leading).
    pub fn wake_waiters(&self) {
        self.inner.flushed.notify();
    }

    /// Writes the high watermark to its checkpoint file, read back on open. Replication calls
    /// this lazily: a high watermark that lags after a crash is only conservative.
    pub async fn checkpoint_high_watermark(&self) -> Result<()> {
        let hw = self.high_watermark();
        let mut bytes = hw.to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(&hw.to_le_bytes()).to_le_bytes());
        replace_file(&self.inner.dir, HIGH_WATERMARK_FILE, &bytes).await?;
        self.inner.state.borrow_mut().high_watermark_checkpointed = Some(hw);
        Ok(())
    }

    /// Checkpoints the high watermark of a replicated log if it moved since the last
    /// checkpoint (what the shard does every `HIGH_WATERMARK_CHECKPOINT_INTERVAL`, and closing
    /// does); returns whether it wrote one. An unreplicated log has none to write.
    pub async fn checkpoint_high_watermark_if_moved(&self) -> Result<bool> {
        let moved = {
            let state = self.inner.state.borrow();
            state.replicated_high_watermark.is_some()
                && state.high_watermark_checkpointed != Some(state.high_watermark())
        };
        if moved {
            self.checkpoint_high_watermark().await?;
        }
        Ok(moved)
    }

    /// Drops the whole log and starts it again, empty, at `offset` (a follower that fell
    /// behind the leader's log start: what it holds can never be continued). Only forward:
    /// `offset` must be past this log's end. The old segments go first (a crash in between
    /// leaves a shorter valid log, which simply fetches again), then the new active segment is
    /// created; the epoch history and the high watermark start at `offset`.
    pub async fn restart_at(&self, offset: u64) -> Result<()> {
        let log = self.clone();
        to_completion(async move { log.restart_at_now(offset).await }).await
    }

    async fn restart_at_now(&self, offset: u64) -> Result<()> {
        let inner = &self.inner;
        let _permit = inner
            .flush_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        while inner.flush_once(true).await? {}
        self.wait_sealed().await?;
        let bases: Vec<u64> = {
            let mut state = inner.state.borrow_mut();
            state.usable()?;
            let end = state.active.index().next_offset();
            if offset <= end {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start: state.log_start,
                    log_end: end,
                });
            }
            state.exclusive = true;
            state
                .sealed
                .iter()
                .map(|s| s.index().base_offset())
                .chain(std::iter::once(state.active.index().base_offset()))
                .collect()
        };
        let result = async {
            for &base in bases.iter().rev() {
                super::files::forget(inner.id, base);
                SealedSegment::delete_files(&SegmentPaths::new(&inner.dir, base)).await?;
            }
            sync_dir(&inner.dir).await?;
            let active = ActiveSegment::create(
                &inner.dir,
                offset,
                inner.config.index_interval_bytes,
                inner.config.write_buffer_bytes,
                inner.config.flush.writes_through(),
            )
            .await?;
            sync_dir(&inner.dir).await?;
            {
                let mut state = inner.state.borrow_mut();
                state.sealed.clear();
                state.active = active;
                state.cache.clear();
                state.log_start = offset;
                state.durable_end = offset;
                state.replicated_high_watermark = Some(offset);
                state.first_unflushed_at = None;
                state.epochs = EpochHistory::default();
                state.epochs_dirty = true;
            }
            inner.checkpoint_epochs_if_dirty().await?;
            self.checkpoint_high_watermark().await
        }
        .await;
        inner.end_exclusive(&result);
        inner.flushed.notify();
        result
    }

    /// The leader epochs of the batches in the log and where each starts.
    pub fn epoch_history(&self) -> EpochHistory {
        self.inner.state.borrow().epochs.clone()
    }

    /// The epoch of the log's newest batch, if any (without copying the history).
    pub fn latest_epoch(&self) -> Option<u32> {
        self.inner.state.borrow().epochs.latest().map(|e| e.epoch)
    }

    /// Where `epoch` ends in this log (Kafka's `OffsetForLeaderEpoch`; see [`EpochHistory`]).
    pub fn end_of_epoch(&self, epoch: u32) -> EpochEnd {
        let state = self.inner.state.borrow();
        state
            .epochs
            .end_of(epoch, state.active.index().next_offset())
    }

    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.inner.state.borrow().total_bytes()
    }

    pub fn segment_count(&self) -> usize {
        let state = self.inner.state.borrow();
        state.sealed.len() + 1
    }

    /// Base offsets of all segments, oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        let state = self.inner.state.borrow();
        state
            .sealed
            .iter()
            .map(|s| s.index().base_offset())
            .chain(std::iter::once(state.active.index().base_offset()))
            .collect()
    }

    pub fn stats(&self) -> LogStats {
        self.inner.stats.get()
    }

    /// Changes the retention limits the next retention pass applies.
    pub fn set_retention(&self, time: Option<Duration>, bytes: Option<u64>) {
        self.inner.retention.set((time, bytes));
    }

    pub fn flush_histograms(&self) -> FlushHistograms {
        let f = &self.inner.flushes;
        FlushHistograms {
            bytes: f.bytes.snapshot(),
            write_seconds: f.write_seconds.snapshot(),
            sync_seconds: f.sync_seconds.snapshot(),
        }
    }

    /// Bytes held by the tail cache.
    pub fn cache_bytes(&self) -> usize {
        self.inner.state.borrow().cache.bytes()
    }

    /// A future that completes when the durable end next moves (or the log fails or closes):
    /// what a long-polling fetch waits on.
    pub fn durable_end_changed(&self) -> crate::notify::Listener {
        self.inner.flushed.listen()
    }

    /// Validates `batch` as a producer's (`validate`; on a compacted log every record must
    /// have a key, else [`StorageError::KeyRequired`]), assigns it the next offsets and the
    /// leader's epoch and buffers it for the next flush. Returns once the batch is in the write
    /// buffer (waiting for space when the buffer is full); call [`PartitionLog::wait_durable`]
    /// to wait for the flush that covers it. On any error the log is unchanged.
    pub async fn append(&self, batch: &[u8], leader_epoch: u32) -> Result<Appended> {
        let header = validate(batch, self.inner.config.batch_bytes_max)?;
        if self.inner.config.cleanup_policy.compacts() {
            super::compaction::check_keys(&header, batch)
                .map_err(|index| StorageError::KeyRequired { index })?;
        }
        self.append_checked(batch, Stamp::Leader { leader_epoch })
            .await
    }

    /// Appends a batch a follower fetched from its leader, with the offsets and epoch the
    /// leader gave it. The batch must be whole and intact (header, length and CRC: the leader
    /// validated its records), start at this log's next offset and carry an epoch no older than
    /// the log's latest. On any error the log is unchanged.
    pub async fn append_replica(&self, batch: &[u8]) -> Result<Appended> {
        let header = validate_frame(batch)?;
        if header.batch_len as usize != batch.len() {
            return Err(BatchError::LengthMismatch {
                declared: u64::from(header.batch_len),
                available: batch.len(),
            }
            .into());
        }
        if batch.len() > self.inner.config.batch_bytes_max {
            return Err(BatchError::TooLarge {
                len: batch.len(),
                max: self.inner.config.batch_bytes_max,
            }
            .into());
        }
        // A batch without records is what compaction leaves of an emptied one on the leader:
        // it spans its offsets, and the follower stores it as it is.
        self.append_checked(batch, Stamp::Replica).await
    }

    async fn append_checked(&self, batch: &[u8], how: Stamp) -> Result<Appended> {
        let inner = &self.inner;
        let header = BatchHeader::parse(batch)?;
        loop {
            let space = inner.space.listen();
            let must_roll = {
                let mut state = inner.state.borrow_mut();
                state.usable()?;
                let next = state.active.index().next_offset();
                let (epoch, base_offset) = match how {
                    Stamp::Leader { leader_epoch } => (leader_epoch, next),
                    Stamp::Replica => (header.leader_epoch, header.base_offset),
                };
                if base_offset != next {
                    return Err(StorageError::NotContiguous {
                        expected: next,
                        found: base_offset,
                    });
                }
                if let Some(latest) = state.epochs.latest().filter(|l| epoch < l.epoch) {
                    return Err(super::epochs::EpochRegression {
                        epoch,
                        offset: base_offset,
                        latest: latest.epoch,
                    }
                    .into());
                }
                if state.exclusive {
                    false
                } else if needs_roll(&inner.config, &state.active, batch.len()) {
                    true
                } else if state.active.make_room(batch.len()) {
                    let header = state.active.append(batch, how);
                    if state.epochs.observe(epoch, header.base_offset)? {
                        state.epochs_dirty = true;
                    }
                    inner.bump(|s| s.appends += 1);
                    state.first_unflushed_at.get_or_insert_with(Instant::now);
                    inner.appended.notify();
                    return Ok(Appended {
                        base_offset: header.base_offset,
                        last_offset: header.last_offset(),
                    });
                } else {
                    state.starved = true;
                    inner.appended.notify();
                    false
                }
            };
            if must_roll {
                self.roll(batch.len()).await?;
            } else {
                space.await;
            }
        }
    }

    /// Waits until the batch is durable per the flush policy (at once for `Never`).
    pub async fn wait_durable(&self, appended: Appended) -> Result<()> {
        if self.inner.config.flush == FlushPolicy::Never {
            return Ok(());
        }
        loop {
            let flushed = self.inner.flushed.listen();
            {
                let state = self.inner.state.borrow();
                if state.durable_end > appended.last_offset {
                    return Ok(());
                }
                state.usable()?;
            }
            flushed.await;
        }
    }

    /// Appends and waits for durability: what a producer with acks waits for.
    pub async fn append_durable(&self, batch: &[u8], leader_epoch: u32) -> Result<Appended> {
        let appended = self.append(batch, leader_epoch).await?;
        self.wait_durable(appended).await?;
        Ok(appended)
    }

    /// Flushes everything appended so far and makes it durable, whatever the policy.
    pub async fn flush(&self) -> Result<()> {
        let _permit = self
            .inner
            .flush_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        while self.inner.flush_once(true).await? {}
        Ok(())
    }

    /// Reads whole batches starting with the one that contains `offset`, up to `max_bytes`
    /// (always at least one batch, so a consumer makes progress), never past the high
    /// watermark. A read at the high watermark returns no batches. Bytes from disk are read
    /// into memory and every batch's frame and CRC checked.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadBatches> {
        self.read_to(offset, max_bytes, ReadBound::HighWatermark)
            .await
    }

    /// Calls `visit` with every batch (header and bytes) from `from` to the durable end, in
    /// order, reading a few MiB at a time and yielding between reads: what rebuilds state kept
    /// in a log (idempotent producers, a group coordinator's groups). A batch that does not
    /// parse is `Corrupt`.
    pub async fn for_each_durable_batch(
        &self,
        from: u64,
        visit: impl FnMut(&BatchHeader, &[u8]),
    ) -> Result<()> {
        self.for_each_durable_batch_until(from, u64::MAX, visit)
            .await
    }

    /// [`PartitionLog::for_each_durable_batch`] for the batches that start below `until`.
    pub async fn for_each_durable_batch_until(
        &self,
        from: u64,
        until: u64,
        mut visit: impl FnMut(&BatchHeader, &[u8]),
    ) -> Result<()> {
        let mut offset = from;
        while offset < self.durable_end().min(until) {
            let read = self.read_to(offset, 4 << 20, ReadBound::DurableEnd).await?;
            if read.is_empty() {
                break;
            }
            for chunk in &read.chunks {
                for item in BatchIter::new(chunk.as_bytes()) {
                    let (header, batch) = item.map_err(|e| StorageError::Corrupt {
                        path: self.dir().to_owned(),
                        position: 0,
                        reason: format!("reading the log's batches at offset {offset}: {e}"),
                    })?;
                    if header.base_offset >= until {
                        return Ok(());
                    }
                    visit(&header, batch);
                    offset = header.next_offset();
                }
            }
            glommio::yield_if_needed().await;
        }
        Ok(())
    }

    /// [`PartitionLog::read`] up to the given bound.
    pub async fn read_to(
        &self,
        offset: u64,
        max_bytes: usize,
        bound: ReadBound,
    ) -> Result<ReadBatches> {
        match self.plan_read_open(offset, max_bytes, bound).await? {
            ReadPlan::Done(answer) => Ok(answer),
            ReadPlan::Disk(disk) => Self::read_disk(disk, offset, max_bytes).await,
        }
    }

    /// Reads a planned disk read into memory, checking every batch.
    async fn read_disk(mut disk: DiskRead, offset: u64, max_bytes: usize) -> Result<ReadBatches> {
        disk.apply_bound().await?;
        let data = read_batches(
            disk.file(),
            &disk.path,
            disk.start,
            disk.readable,
            offset,
            max_bytes,
            disk.interval,
        )
        .await?;
        Ok(ReadBatches {
            chunks: data.into_iter().map(ReadChunk::Disk).collect(),
            high_watermark: disk.high_watermark,
            log_start: disk.log_start,
            from_cache: false,
        })
    }

    /// The same batches as [`PartitionLog::read`], for sending to a socket: tail reads come
    /// from the cache as they are; data in sealed segments is returned as a span of the
    /// segment file ([`FileRange`]) found from batch headers and the index, to be sent with
    /// `sendfile` without passing through memory. Its batches' CRCs are not checked here (the
    /// consumer checks them, as Kafka's do); the headers scanned to find the span are. The
    /// active segment is still read into memory and checked: its last block is rewritten by
    /// direct writes, which a page-cache view of the file must not race.
    pub async fn read_for_send(&self, offset: u64, max_bytes: usize) -> Result<SendRead> {
        self.read_for_send_to(offset, max_bytes, ReadBound::HighWatermark)
            .await
    }

    /// [`PartitionLog::read_for_send`] up to the given bound (a follower's fetch reads up to
    /// the durable end).
    pub async fn read_for_send_to(
        &self,
        offset: u64,
        max_bytes: usize,
        bound: ReadBound,
    ) -> Result<SendRead> {
        match self.plan_read_open(offset, max_bytes, bound).await? {
            ReadPlan::Done(answer) => Ok(answer.into()),
            ReadPlan::Disk(disk) if !disk.sealed => {
                Ok(Self::read_disk(disk, offset, max_bytes).await?.into())
            }
            ReadPlan::Disk(mut disk) => {
                disk.apply_bound().await?;
                let query = LocateQuery {
                    start: disk.start,
                    readable: disk.readable,
                    offset,
                    max_bytes,
                    boundaries: &disk.boundaries,
                    index_interval: disk.interval,
                };
                let span = locate_batches(disk.file(), &disk.path, query).await?;
                let chunks = span
                    .map(|span| {
                        assert!(
                            span.position < span.end && span.end <= disk.readable,
                            "a located span holds whole, readable batches"
                        );
                        SendChunk::File(FileRange {
                            file: Rc::clone(disk.file()),
                            position: span.position,
                            len: (span.end - span.position) as usize,
                        })
                    })
                    .into_iter()
                    .collect();
                Ok(SendRead {
                    chunks,
                    high_watermark: disk.high_watermark,
                    log_start: disk.log_start,
                })
            }
        }
    }

    /// [`PartitionLog::plan_read`], with a sealed segment's file opened (through the shard's
    /// descriptor cache). A segment deleted by retention meanwhile is out of range.
    async fn plan_read_open(
        &self,
        offset: u64,
        max_bytes: usize,
        bound: ReadBound,
    ) -> Result<ReadPlan> {
        let mut plan = self.plan_read(offset, max_bytes, bound)?;
        if let ReadPlan::Disk(disk) = &mut plan {
            if let Some(base) = disk.sealed_base {
                match super::files::open_sealed(self.inner.id, base, &disk.path).await {
                    Ok(file) => disk.file = Some(file),
                    Err(StorageError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        let state = self.inner.state.borrow();
                        return Err(StorageError::OffsetOutOfRange {
                            offset,
                            log_start: state.log_start,
                            log_end: state.bound(bound),
                        });
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(plan)
    }

    /// Checks `offset`, answers from the cache when it can, or says which segment to read.
    fn plan_read(&self, offset: u64, max_bytes: usize, bound: ReadBound) -> Result<ReadPlan> {
        let state = self.inner.state.borrow();
        state.usable()?;
        let high_watermark = state.high_watermark();
        let readable_end = state.bound(bound);
        let log_start = state.log_start;
        if offset < log_start || offset > readable_end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start,
                log_end: readable_end,
            });
        }
        let mut answer = ReadBatches {
            chunks: Vec::new(),
            high_watermark,
            log_start,
            from_cache: false,
        };
        if offset == readable_end {
            return Ok(ReadPlan::Done(answer));
        }
        if let Some(slices) = state.cache.read(offset, max_bytes, readable_end) {
            answer.chunks = slices.into_iter().map(ReadChunk::Cached).collect();
            answer.from_cache = true;
            self.inner.bump(|s| s.cache_hits += 1);
            return Ok(ReadPlan::Done(answer));
        }
        self.inner.bump(|s| s.disk_reads += 1);
        let interval = self.inner.config.index_interval_bytes;
        let sealed = offset < state.active.index().base_offset();
        let (file, path, index, readable) = if !sealed {
            let active = &state.active;
            (
                Some(Rc::clone(active.file())),
                &active.paths().log,
                active.index(),
                active.written_size(),
            )
        } else {
            let at = state
                .sealed
                .partition_point(|s| s.index().base_offset() <= offset);
            let segment = &state.sealed[at.saturating_sub(1)];
            (
                None,
                &segment.paths().log,
                segment.index(),
                segment.index().size_bytes(),
            )
        };
        let start = read_start(index, offset);
        // The batch holding `offset` starts within one index interval of `start`.
        let reach = start.position + u64::from(interval) + max_bytes as u64;
        // What `readable` bytes hold ends at the segment's end if it is sealed, at the durable
        // end if it is the active one (its written bytes are exactly what was flushed). Only a
        // bound below that (a replicated log's high watermark) costs a header walk.
        let segment_end = if sealed {
            index.next_offset()
        } else {
            state.durable_end
        };
        let bound_in_segment = (readable_end < segment_end)
            .then(|| (readable_end, index.position_for_offset(readable_end)));
        Ok(ReadPlan::Disk(DiskRead {
            file,
            sealed_base: sealed.then(|| index.base_offset()),
            path: path.clone(),
            start,
            readable,
            bound_in_segment,
            interval,
            high_watermark,
            log_start,
            boundaries: index.boundaries_in(start.position, reach),
            sealed,
        }))
    }

    /// Resolves an [`OffsetSpec`]: earliest, latest (the high watermark), or the first record
    /// at or after a timestamp (`None` when every record is older).
    pub async fn list_offset(&self, spec: OffsetSpec) -> Result<Option<u64>> {
        let timestamp = match spec {
            OffsetSpec::Earliest => return Ok(Some(self.log_start())),
            OffsetSpec::Latest => return Ok(Some(self.high_watermark())),
            OffsetSpec::Timestamp(timestamp) => timestamp,
        };
        let mut offset = {
            let state = self.inner.state.borrow();
            let segments = state
                .sealed
                .iter()
                .map(|s| s.index())
                .chain(std::iter::once(state.active.index()));
            let mut start = None;
            for index in segments {
                if index.max_timestamp() >= timestamp {
                    start = Some(index.scan_start_for_timestamp(timestamp));
                    break;
                }
            }
            match start {
                Some(start) => start.max(state.log_start),
                None => return Ok(None),
            }
        };
        loop {
            if offset >= self.high_watermark() {
                return Ok(None);
            }
            let batches = self.read(offset, 1 << 20).await?;
            for chunk in &batches.chunks {
                for item in BatchIter::new(chunk.as_bytes()) {
                    let (header, bytes) = item.map_err(|e| StorageError::Corrupt {
                        path: self.inner.dir.clone(),
                        position: 0,
                        reason: format!(
                            "batch at offset {offset} fails its check on a time lookup: {e}"
                        ),
                    })?;
                    offset = header.next_offset();
                    // An empty batch (left by compaction) holds no record to point at.
                    if header.record_count > 0 && header.max_timestamp >= timestamp {
                        return Ok(Some(first_record_at_or_after(&header, bytes, timestamp)));
                    }
                }
            }
            glommio::yield_if_needed().await;
        }
    }

    /// Deletes sealed segments past the retention limits (never the active segment) and
    /// advances the log start; nothing on a log whose cleanup policy is `Compact` alone.
    /// `now_ms` is the current time in ms since the Unix epoch.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport> {
        let inner = &self.inner;
        if !inner.config.cleanup_policy.deletes() {
            return Ok(RetentionReport {
                log_start: self.log_start(),
                ..RetentionReport::default()
            });
        }
        let _maintenance = inner
            .maintenance_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        let _permit = inner
            .flush_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        self.wait_sealed().await?;
        let mut report = RetentionReport::default();
        loop {
            let victim = {
                let mut state = inner.state.borrow_mut();
                state.usable()?;
                let Some(oldest) = state.sealed.front() else {
                    break;
                };
                let (retention_time, retention_bytes) = inner.retention.get();
                let expired = retention_time.is_some_and(|retention| {
                    oldest.index().max_timestamp()
                        < now_ms.saturating_sub(retention.as_millis() as i64)
                });
                let oversized = retention_bytes.is_some_and(|limit| state.total_bytes() > limit);
                if !expired && !oversized {
                    break;
                }
                let Some(victim) = state.sealed.pop_front() else {
                    break;
                };
                state.log_start = state
                    .sealed
                    .front()
                    .map_or(state.active.index().base_offset(), |s| {
                        s.index().base_offset()
                    });
                victim
            };
            report.segments_deleted += 1;
            report.bytes_deleted += victim.index().size_bytes();
            tracing::debug!(segment = %victim.paths().log.display(), "retention deletes segment");
            victim.delete().await?;
        }
        if report.segments_deleted > 0 {
            sync_dir(&inner.dir).await?;
            {
                let mut state = inner.state.borrow_mut();
                let log_start = state.log_start;
                if state.epochs.truncate_before(log_start) {
                    state.epochs_dirty = true;
                }
            }
            inner.checkpoint_epochs_if_dirty().await?;
        }
        report.log_start = self.log_start();
        Ok(report)
    }

    /// Removes every batch at or after `offset` (a batch containing `offset` goes whole), across
    /// segments, and returns the new end of the log. Used by replication to cut a divergent tail.
    pub async fn truncate_to(&self, offset: u64) -> Result<u64> {
        let log = self.clone();
        to_completion(async move { log.truncate_to_now(offset).await }).await
    }

    async fn truncate_to_now(&self, offset: u64) -> Result<u64> {
        let inner = &self.inner;
        let _maintenance = inner
            .maintenance_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        let _permit = inner
            .flush_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        while inner.flush_once(true).await? {}
        self.wait_sealed().await?;
        {
            let mut state = inner.state.borrow_mut();
            state.usable()?;
            let end = state.active.index().next_offset();
            if offset < state.log_start {
                return Err(StorageError::OffsetOutOfRange {
                    offset,
                    log_start: state.log_start,
                    log_end: end,
                });
            }
            if offset >= end {
                return Ok(end);
            }
            state.exclusive = true;
        }
        let result = self.truncate_locked(offset).await;
        inner.end_exclusive(&result);
        result
    }

    async fn truncate_locked(&self, offset: u64) -> Result<u64> {
        let inner = &self.inner;
        // The segment that keeps data: the last one starting at or before `offset`.
        let (target_base, doomed, file, path, position, readable) = {
            let state = inner.state.borrow();
            let bases: Vec<u64> = state
                .sealed
                .iter()
                .map(|s| s.index().base_offset())
                .chain(std::iter::once(state.active.index().base_offset()))
                .collect();
            let at = bases.partition_point(|&b| b <= offset).saturating_sub(1);
            let target_base = bases[at];
            let doomed: Vec<u64> = bases[at + 1..].to_vec();
            let (file, path, position, readable) = if at == state.sealed.len() {
                let a = &state.active;
                (
                    Some(Rc::clone(a.file())),
                    a.paths().log.clone(),
                    a.index().position_for_offset(offset),
                    a.written_size(),
                )
            } else {
                let s = &state.sealed[at];
                (
                    None,
                    s.paths().log.clone(),
                    s.index().position_for_offset(offset),
                    s.index().size_bytes(),
                )
            };
            (target_base, doomed, file, path, position, readable)
        };
        let file = match file {
            Some(file) => file,
            None => super::files::open_sealed(inner.id, target_base, &path).await?,
        };
        let cut = find_batch_position(&file, &path, position, readable, offset).await?;
        drop(file);
        // Delete later segments newest first, so a crash leaves a valid prefix of the log.
        for &base in doomed.iter().rev() {
            super::files::forget(inner.id, base);
            SealedSegment::delete_files(&SegmentPaths::new(&inner.dir, base)).await?;
        }
        super::files::forget(inner.id, target_base);
        let paths = SegmentPaths::new(&inner.dir, target_base);
        remove_if_exists(&paths.offset_index).await?;
        remove_if_exists(&paths.time_index).await?;
        sync_dir(&inner.dir).await?;
        {
            let file = glommio::io::OpenOptions::new()
                .write(true)
                .dma_open(&paths.log)
                .await
                .map_err(io_error("open", &paths.log))?;
            file.truncate(cut)
                .await
                .map_err(io_error("truncate", &paths.log))?;
            file.fdatasync()
                .await
                .map_err(io_error("fdatasync", &paths.log))?;
            file.close().await.map_err(io_error("close", &paths.log))?;
        }
        let (active, _, _) = ActiveSegment::recover(
            &inner.dir,
            target_base,
            inner.config.index_interval_bytes,
            inner.config.write_buffer_bytes,
            inner.config.flush.writes_through(),
        )
        .await?;
        let end = active.index().next_offset();
        // The epochs that began at or after the cut are gone with their batches.
        if inner.state.borrow_mut().epochs.truncate_from(end) {
            inner.state.borrow_mut().epochs_dirty = true;
            inner.checkpoint_epochs_if_dirty().await?;
        }
        let mut state = inner.state.borrow_mut();
        while state
            .sealed
            .back()
            .is_some_and(|s| s.index().base_offset() >= target_base)
        {
            state.sealed.pop_back();
        }
        state.active = active;
        state.cache.clear();
        state.durable_end = end;
        state.clean_end = state.clean_end.min(end);
        if let Some(hw) = &mut state.replicated_high_watermark {
            *hw = (*hw).min(end);
        }
        state.first_unflushed_at = None;
        inner.flushed.notify();
        Ok(end)
    }

    /// Flushes and syncs everything, stops the flusher and closes the log. Later calls on any
    /// clone fail with [`StorageError::Closed`].
    pub async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if !inner.state.borrow().closed {
            self.checkpoint_high_watermark_if_moved().await?;
        }
        inner.closing.set(true);
        {
            // A compaction pass stops at its next step; wait for it.
            let _maintenance = inner
                .maintenance_lock
                .acquire_permit(1)
                .await
                .map_err(|_| StorageError::Closed)?;
            let _permit = inner
                .flush_lock
                .acquire_permit(1)
                .await
                .map_err(|_| StorageError::Closed)?;
            if inner.state.borrow().closed {
                return Ok(());
            }
            let flushed = async {
                self.wait_sealed().await?;
                while inner.flush_once(true).await? {}
                let file = Rc::clone(inner.state.borrow().active.file());
                let (size, path) = {
                    let state = inner.state.borrow();
                    (
                        state.active.written_size(),
                        state.active.paths().log.clone(),
                    )
                };
                file.truncate(size)
                    .await
                    .map_err(io_error("truncate", &path))?;
                file.fdatasync()
                    .await
                    .map_err(io_error("fdatasync", &path))?;
                // The next open may trust the active segment's index without scanning it. The
                // marker is not synced: the segment it describes is durable already, and a
                // marker lost or torn by a power cut only costs the next open its scan (its
                // CRC refuses a torn one). A sync per log would double a stop's cost.
                let marker = super::marker::encode(inner.state.borrow().active.index());
                let marker_path = inner.dir.join(MARKER_FILE);
                std::fs::write(&marker_path, &marker).map_err(io_error("write", &marker_path))?;
                Ok::<(), StorageError>(())
            }
            .await;
            let mut state = inner.state.borrow_mut();
            state.closed = true;
            inner.appended.notify();
            inner.flushed.notify();
            inner.space.notify();
            drop(state);
            flushed?;
        }
        let flusher = inner.flusher.borrow_mut().take();
        if let Some(flusher) = flusher {
            flusher.await;
        }
        super::files::forget_log(inner.id);
        Ok(())
    }

    /// Seals the active segment and starts a new one, if it still needs it for a batch of
    /// `batch_len` bytes once the flush lock is held.
    async fn roll(&self, batch_len: usize) -> Result<()> {
        let log = self.clone();
        to_completion(async move { log.roll_now(batch_len).await }).await
    }

    async fn roll_now(&self, batch_len: usize) -> Result<()> {
        let inner = &self.inner;
        let _permit = inner
            .flush_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        {
            let mut state = inner.state.borrow_mut();
            state.usable()?;
            if state.exclusive || !needs_roll(&inner.config, &state.active, batch_len) {
                return Ok(());
            }
            state.exclusive = true;
        }
        let started = Instant::now();
        let result = self.roll_locked().await;
        inner.bump(|s| {
            s.rolls += 1;
            s.roll_us += started.elapsed().as_micros() as u64;
        });
        inner.end_exclusive(&result);
        result
    }

    async fn roll_locked(&self) -> Result<()> {
        let inner = &self.inner;
        // Everything in the segment is durable before the next one takes appends, so the
        // previous segment never holds less than the next one's acknowledged data needs.
        while inner.flush_once(true).await? {}
        // One seal at a time: at most two segments are ever unsealed.
        self.wait_sealed().await?;
        let permit = super::files::seal_permit().await?;
        let (plan, next_base) = {
            let state = inner.state.borrow();
            if state.sealed.len() + 1 >= SEGMENTS_PER_PARTITION_MAX {
                return Err(StorageError::Config(format!(
                    "partition holds {SEGMENTS_PER_PARTITION_MAX} segments: raise segment_bytes_max or lower retention"
                )));
            }
            (state.active.seal_plan(), state.active.index().next_offset())
        };
        // The next segment first (created durably), then the previous one is sealed in the
        // background while appends go to the next: a crash before the seal completes leaves
        // two unsealed segments, and recovery seals the earlier one (`Padding::Cut`).
        let mut fresh = ActiveSegment::create(
            &inner.dir,
            next_base,
            inner.config.index_interval_bytes,
            inner.config.write_buffer_bytes,
            inner.config.flush.writes_through(),
        )
        .await?;
        seal_failpoint(SealStep::NextCreated);
        {
            let mut state = inner.state.borrow_mut();
            fresh.continue_sizing(&state.active);
            let old = std::mem::replace(&mut state.active, fresh);
            state.sealed.push_back(old.into_sealed(inner.id));
            state.sealing = true;
        }
        let sealing = Rc::clone(inner);
        glommio::spawn_local(async move {
            let sealed = plan.execute().await;
            drop(permit);
            let mut state = sealing.state.borrow_mut();
            state.sealing = false;
            if let Err(error) = sealed {
                tracing::error!(%error, "sealing a segment failed; the log stops accepting writes");
                state.failed = Some(error.to_string());
                sealing.flushed.notify();
                sealing.space.notify();
            }
            drop(state);
            sealing.sealed_now.notify();
        })
        .detach();
        Ok(())
    }

    /// Waits for a roll's background seal, if one is under way; a failed seal is an error.
    pub(crate) async fn wait_sealed(&self) -> Result<()> {
        loop {
            let sealed = self.inner.sealed_now.listen();
            {
                let state = self.inner.state.borrow();
                if !state.sealing {
                    return match &state.failed {
                        Some(why) => Err(StorageError::Failed(why.clone())),
                        None => Ok(()),
                    };
                }
            }
            sealed.await;
        }
    }
}

fn read_start(index: &SegmentIndex, offset: u64) -> ReadStart {
    let (base_offset, position) = index.entry_for_offset(offset);
    ReadStart {
        position,
        base_offset,
    }
}

fn needs_roll(config: &LogConfig, active: &ActiveSegment, batch_len: usize) -> bool {
    let index = active.index();
    if index.is_empty() {
        return false;
    }
    if index.size_bytes() + batch_len as u64 > config.segment_bytes_max {
        return true;
    }
    config
        .segment_age_max
        .is_some_and(|age| active.created_at().elapsed() >= age)
}

/// Offsets must continue from one segment into the next.
fn check_continuity(previous: &SegmentIndex, next: &SegmentIndex, next_path: &Path) -> Result<()> {
    if previous.next_offset() != next.base_offset() {
        return Err(StorageError::Corrupt {
            path: next_path.to_owned(),
            position: 0,
            reason: format!(
                "segment starts at offset {} but the previous one ends at {}",
                next.base_offset(),
                previous.next_offset()
            ),
        });
    }
    Ok(())
}

/// The offset of the first record with a timestamp at or after `timestamp` in a batch whose
/// largest timestamp qualifies.
fn first_record_at_or_after(header: &BatchHeader, batch: &[u8], timestamp: i64) -> u64 {
    if header.compression() != Some(Compression::None) {
        return header.base_offset;
    }
    for record in RecordIter::new(header, &batch[BATCH_HEADER_BYTES..]).flatten() {
        if record.timestamp >= timestamp {
            return header.base_offset + u64::from(record.offset_delta);
        }
    }
    header.base_offset
}

/// Lists segment base offsets in `dir`, oldest first; removes leftovers of interrupted work.
async fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let owned = dir.to_owned();
    let listing = glommio::executor()
        .spawn_blocking(move || -> std::io::Result<Vec<String>> {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&owned)? {
                names.push(entry?.file_name().to_string_lossy().into_owned());
            }
            Ok(names)
        })
        .await
        .map_err(io_error("list directory", dir))?;
    let mut bases: Vec<u64> = listing
        .iter()
        .filter_map(|name| parse_segment_file_name(name))
        .filter(|(_, ext)| *ext == "log")
        .map(|(base, _)| base)
        .collect();
    bases.sort_unstable();
    for name in &listing {
        if let Some((base, ext)) = parse_segment_file_name(name) {
            if ext != "log" && bases.binary_search(&base).is_err() {
                // An index whose log is gone (deleted by retention or truncation mid-way).
                remove_if_exists(&dir.join(name)).await?;
            }
        }
    }
    Ok(bases)
}

/// The leader-epoch history on open: the checkpoint (missing: empty), cut to the log's range,
/// plus the epochs of the active segment's batches that the checkpoint had not yet recorded
/// (a crash between appending a new epoch's batch and its flush). Returns the history and
/// whether it differs from the file.
async fn recover_epochs(
    dir: &Path,
    log_start: u64,
    log_end: u64,
    scanned: &[EpochStart],
) -> Result<(EpochHistory, bool)> {
    let path = dir.join(EPOCH_CHECKPOINT_FILE);
    let mut history = match read_small_file(&path).await? {
        None => EpochHistory::default(),
        Some(bytes) => EpochHistory::decode(&bytes).map_err(|reason| StorageError::Corrupt {
            path: path.clone(),
            position: 0,
            reason: reason.to_string(),
        })?,
    };
    let mut changed = history.truncate_from(log_end);
    changed |= history.truncate_before(log_start);
    for start in scanned {
        let covered = history
            .latest()
            .is_some_and(|l| start.start_offset < l.start_offset || start.epoch == l.epoch);
        if !covered {
            changed |= history
                .observe(start.epoch, start.start_offset)
                .map_err(|e| StorageError::Corrupt {
                    path: path.clone(),
                    position: 0,
                    reason: format!("the log's epochs disagree with the checkpoint: {e}"),
                })?;
        }
    }
    Ok((history, changed))
}

/// Runs an exclusive section (a roll, a truncation, a restart) in a task of its own and waits
/// for it. The section then always runs to its end even when the caller is dropped midway (a
/// stopping shard cancels its fetcher, perhaps in the middle of a truncation): a section cut
/// short would leave the log marked exclusive, holding every later append and the close that
/// waits for them, and its files half-changed.
async fn to_completion<T: 'static>(
    section: impl std::future::Future<Output = Result<T>> + 'static,
) -> Result<T> {
    glommio::spawn_local(section)
        .detach()
        .await
        .unwrap_or(Err(StorageError::Closed))
}

/// The high watermark's checkpoint, if one was written.
async fn read_high_watermark(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(HIGH_WATERMARK_FILE);
    let Some(bytes) = read_small_file(&path).await? else {
        return Ok(None);
    };
    let corrupt = |reason: &str| StorageError::Corrupt {
        path: path.clone(),
        position: 0,
        reason: reason.to_string(),
    };
    if bytes.len() != 12 {
        return Err(corrupt("not 12 bytes"));
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&bytes[..8]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[8..]);
    if crc32c::crc32c(&offset) != u32::from_le_bytes(crc) {
        return Err(corrupt("CRC mismatch"));
    }
    Ok(Some(u64::from_le_bytes(offset)))
}

impl LogInner {
    /// Writes the leader-epoch history's checkpoint if it changed since the last one (durably).
    async fn checkpoint_epochs_if_dirty(&self) -> Result<()> {
        self.write_epochs_if_dirty(true).await.map(drop)
    }

    /// Writes the epoch checkpoint if it changed; returns whether it did. With `sync` it is
    /// durable on return; without, the caller's sync round must cover metadata.
    async fn write_epochs_if_dirty(&self, sync: bool) -> Result<bool> {
        let bytes = {
            let mut state = self.state.borrow_mut();
            if !state.epochs_dirty {
                return Ok(false);
            }
            state.epochs_dirty = false;
            state.epochs.encode()
        };
        let written = if sync {
            replace_file(&self.dir, EPOCH_CHECKPOINT_FILE, &bytes).await
        } else {
            replace_file_unsynced(&self.dir, EPOCH_CHECKPOINT_FILE, &bytes).await
        };
        if written.is_err() {
            self.state.borrow_mut().epochs_dirty = true;
        }
        written.map(|()| true)
    }

    /// Ends a roll or truncation: appends may go on; a failure stops the log.
    fn end_exclusive<T>(&self, result: &Result<T>) {
        let mut state = self.state.borrow_mut();
        state.exclusive = false;
        if let Err(error) = result {
            state.failed = Some(error.to_string());
            self.flushed.notify();
        }
        self.space.notify();
    }

    fn bump(&self, update: impl FnOnce(&mut LogStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }

    /// Writes the active segment's buffered appends (one DMA write), syncs them when asked,
    /// and publishes the new durable end. Returns whether there was anything to flush. The
    /// caller holds the flush lock.
    async fn flush_once(&self, sync: bool) -> Result<bool> {
        let (job, extension) = {
            let mut state = self.state.borrow_mut();
            state.usable()?;
            let job = state.active.take_flush();
            if job.is_some() {
                state.first_unflushed_at = None;
                state.starved = false;
            }
            // A flush that would grow the file first extends it ahead (see `ExtendBy`): with
            // written zeros when every append is flushed (latency mode's small, frequent
            // writes), with an allocation otherwise (zeros would double the bytes written).
            let by = match self.config.flush {
                FlushPolicy::Always => ExtendBy::Zeros,
                _ => ExtendBy::Allocation,
            };
            let extension = job
                .as_ref()
                .and_then(|job| state.active.extension_for(job, by));
            (job, extension)
        };
        let Some(job) = job else { return Ok(false) };
        // The new buffer has room again: appenders blocked on space may proceed.
        self.space.notify();
        let outcome = async {
            if self.state.borrow().marker_removed_unsynced {
                // The clean-shutdown marker's deletion is durable before the segment changes.
                sync_dir(&self.dir).await?;
                self.state.borrow_mut().marker_removed_unsynced = false;
            }
            let extended = match &extension {
                Some(extension) => extension.apply().await?,
                None => false,
            };
            // A new epoch's start is on disk before any of its data is reported durable: with a
            // sync, the checkpoint is written unsynced first and the same round (a syncfs, then)
            // makes both durable; without one, it is synced on its own.
            let started = Instant::now();
            write_job(&job).await?;
            let written = Instant::now();
            if sync {
                let metadata = self.write_epochs_if_dirty(false).await?;
                let device = match self.device.get() {
                    Some(device) => device,
                    None => {
                        let device = super::sync::device_of(&job.file, &job.path)?;
                        self.device.set(Some(device));
                        device
                    }
                };
                super::sync::sync(&job.file, &job.path, device, metadata).await?;
            } else {
                self.checkpoint_epochs_if_dirty().await?;
            }
            let times = (
                written.duration_since(started).as_micros() as u64,
                if sync {
                    written.elapsed().as_micros() as u64
                } else {
                    0
                },
            );
            Ok::<_, StorageError>((times, extended))
        }
        .await;
        let mut state = self.state.borrow_mut();
        let outcome = outcome.map(|(times, extended)| {
            if let (true, Some(extension)) = (extended, &extension) {
                state.active.extended(extension);
            }
            times
        });
        let (write_us, sync_us) = match outcome {
            Ok(times) => times,
            Err(error) => {
                tracing::error!(%error, "flush failed; the log stops accepting writes");
                state.failed = Some(error.to_string());
                self.flushed.notify();
                self.space.notify();
                return Err(error);
            }
        };
        state.active.flushed(&job);
        self.bump(|s| {
            s.writes += 1;
            s.syncs += u64::from(sync);
            s.bytes_written += job.buf.len() as u64;
            s.write_us += write_us;
            s.sync_us += sync_us;
        });
        self.flushes.bytes.observe(job.buf.len() as f64);
        self.flushes.write_seconds.observe(write_us as f64 / 1e6);
        crate::metrics::latency::record_flush_device(std::time::Duration::from_micros(
            write_us + sync_us,
        ));
        if sync {
            self.flushes.sync_seconds.observe(sync_us as f64 / 1e6);
        }
        state.durable_end = job.next_offset;
        let charge = job.buf.len();
        let chunk = if job.new_bytes as usize * 4 >= job.capacity {
            Chunk::new(ChunkBytes::Shared(Rc::clone(&job.buf)), charge, job.batches)
        } else {
            // Small flush: keep a copy (from the shard's reused pieces) rather than pinning a whole
            // write buffer.
            let first = job.batches.first().map_or(0, |b| b.start as usize);
            let last = job.batches.last().map_or(0, |b| (b.start + b.len) as usize);
            let copy = super::cache::CopiedBytes::of(&job.buf.as_bytes()[first..last]);
            let charge = copy.capacity();
            let batches = job
                .batches
                .iter()
                .map(|b| super::cache::CachedBatch {
                    start: b.start - first as u32,
                    ..*b
                })
                .collect();
            Chunk::new(ChunkBytes::Copied(copy), charge, batches)
        };
        state.cache.push(chunk);
        drop(state);
        self.flushed.notify();
        Ok(true)
    }
}

/// Writes a flush job (no sync).
async fn write_job(job: &FlushJob) -> Result<()> {
    let wanted = job.buf.len();
    let written = job
        .file
        .write_rc_at(Rc::clone(&job.buf), job.position)
        .await
        .map_err(io_error("write", &job.path))?;
    if written != wanted {
        return Err(StorageError::Io {
            op: "write",
            path: job.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short direct write: {written} of {wanted} bytes"),
            ),
        });
    }
    Ok(())
}

/// The per-log background task: waits for appended data and flushes it as the policy says.
async fn flusher_loop(log: Weak<LogInner>) {
    loop {
        let Some(inner) = log.upgrade() else { return };
        let appended = inner.appended.listen();
        let (has_data, closed, starved, unflushed, since) = {
            let state = inner.state.borrow();
            (
                state.active.unflushed_bytes() > 0,
                state.closed || state.failed.is_some(),
                state.starved,
                state.active.unflushed_bytes(),
                state.first_unflushed_at,
            )
        };
        if closed {
            return;
        }
        if !has_data {
            drop(inner);
            appended.await;
            continue;
        }
        let window = match inner.config.flush {
            FlushPolicy::Always => None,
            FlushPolicy::Interval { interval, bytes } => Some((interval, bytes)),
            FlushPolicy::Never => Some((
                WRITE_BEHIND_INTERVAL,
                inner.config.write_buffer_bytes as u64 / 2,
            )),
        };
        if let Some((interval, bytes)) = window {
            let deadline = since.unwrap_or_else(Instant::now) + interval;
            let now = Instant::now();
            if !starved && unflushed < bytes && now < deadline {
                drop(inner);
                futures_lite::future::or(glommio::timer::sleep(deadline - now), appended).await;
                continue;
            }
        }
        let Ok(_permit) = inner.flush_lock.acquire_permit(1).await else {
            return;
        };
        // A write-through segment (`O_DSYNC`) is durable when its write returns.
        let sync = inner.config.flush.syncs() && !inner.config.flush.writes_through();
        if inner.flush_once(sync).await.is_err() {
            return;
        }
    }
}

impl Drop for LogInner {
    fn drop(&mut self) {
        super::files::forget_log(self.id);
    }
}
