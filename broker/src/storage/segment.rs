//! Segment files: the one [`ActiveSegment`] being appended, and read-only [`SealedSegment`]s.
//!
//! On-disk layout (see `docs/format.md`): `{base_offset:020}.log` holds batches end to end;
//! sealed segments also have `.index` and `.timeindex`. Both kinds are owned by the shard that
//! owns the partition; nothing here is shared across threads.
//!
//! The active segment is written with O_DIRECT through glommio's `DmaFile`. Appends are copied
//! into an aligned write buffer; a flush writes the buffer from the block holding the previous
//! logical end, rounded up to whole blocks, with the padding zeroed. The partial last block is
//! carried into the next buffer and written again with more data next time, so padding never
//! becomes part of the log: the logical end is the end of the last batch, and a sealed segment is
//! truncated to exactly that size. The type-state is the guarantee that sealed segments are never
//! appended to: `ActiveSegment::into_sealed` consumes the active segment, and `SealedSegment` has
//! no method that writes its log.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use sluice_protocol::batch::{stamp, validate_frame, BatchHeader};
use sluice_protocol::BATCH_HEADER_BYTES;

use super::buffers::{BufferSizer, WriteBuffer};
use super::cache::CachedBatch;
use super::epochs::EpochStart;
use super::error::{io_error, Result, StorageError};
use super::index::SegmentIndex;
use super::scan::{segment_file_name, Feed, Scanner};
use crate::limits::{DMA_ALIGNMENT, SCAN_CHUNK_BYTES};

fn align_down(value: u64) -> u64 {
    value & !(DMA_ALIGNMENT - 1)
}

fn align_up(value: u64) -> u64 {
    align_down(value + DMA_ALIGNMENT - 1)
}

/// The three files of one segment.
#[derive(Debug, Clone)]
pub struct SegmentPaths {
    pub log: PathBuf,
    pub offset_index: PathBuf,
    pub time_index: PathBuf,
}

impl SegmentPaths {
    pub fn new(dir: &Path, base_offset: u64) -> SegmentPaths {
        SegmentPaths {
            log: dir.join(segment_file_name(base_offset, "log")),
            offset_index: dir.join(segment_file_name(base_offset, "index")),
            time_index: dir.join(segment_file_name(base_offset, "timeindex")),
        }
    }
}

async fn open_rw(path: &Path, create: bool, write_through: bool) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .custom_flags(dsync_flag(write_through))
        .dma_open(path)
        .await
        .map_err(io_error("open", path))
}

/// `O_DSYNC` for a write-through active segment: every write returns only once it is durable,
/// data and the metadata needed to read it back, so no separate fdatasync is needed.
fn dsync_flag(write_through: bool) -> i32 {
    if write_through {
        libc::O_DSYNC
    } else {
        0
    }
}

/// Reads a whole (small) file, or `None` if it does not exist.
pub(crate) async fn read_small_file(path: &Path) -> Result<Option<Vec<u8>>> {
    let _permit = super::files::small_file_permit().await?;
    let file = match DmaFile::open(path).await {
        Ok(file) => file,
        Err(error) => {
            let error = std::io::Error::from(error);
            if error.kind() == std::io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(io_error("open", path)(error));
        }
    };
    let size = file.file_size().await.map_err(io_error("stat", path))?;
    let bytes = if size == 0 {
        Vec::new()
    } else {
        let data = file
            .read_at(0, size as usize)
            .await
            .map_err(io_error("read", path))?;
        data.to_vec()
    };
    file.close().await.map_err(io_error("close", path))?;
    Ok(Some(bytes))
}

/// Writes a small file durably with direct I/O.
pub(crate) async fn write_small_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_small_file_then(path, bytes, true).await
}

/// Writes a small file, and fdatasyncs it when `sync` (else a later sync must cover it).
async fn write_small_file_then(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let _permit = super::files::small_file_permit().await?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .map_err(io_error("create", path))?;
    if !bytes.is_empty() {
        let aligned = align_up(bytes.len() as u64) as usize;
        let mut buf = file.alloc_dma_buffer(aligned);
        let out = buf.as_bytes_mut();
        out[..bytes.len()].copy_from_slice(bytes);
        out[bytes.len()..].fill(0);
        let written = file
            .write_at(buf, 0)
            .await
            .map_err(io_error("write", path))?;
        if written != aligned {
            return Err(short_write(path, written, aligned));
        }
    }
    file.truncate(bytes.len() as u64)
        .await
        .map_err(io_error("truncate", path))?;
    if sync {
        file.fdatasync()
            .await
            .map_err(io_error("fdatasync", path))?;
    }
    file.close().await.map_err(io_error("close", path))
}

fn short_write(path: &Path, written: usize, wanted: usize) -> StorageError {
    StorageError::Io {
        op: "write",
        path: path.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short direct write: {written} of {wanted} bytes"),
        ),
    }
}

/// Replaces `dir/name` with `bytes` atomically: a durable temporary file renamed over it, then
/// the directory synced. A crash leaves the old file or the new one, never a mix.
pub(crate) async fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    replace_file_then(dir, name, bytes, true).await
}

/// As [`replace_file`], but nothing is synced: the caller's next `syncfs` of the file system
/// (a sync round with `metadata`, `storage/sync.rs`) makes the file and its name durable.
pub(crate) async fn replace_file_unsynced(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    replace_file_then(dir, name, bytes, false).await
}

async fn replace_file_then(dir: &Path, name: &str, bytes: &[u8], sync: bool) -> Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    write_small_file_then(&temporary, bytes, sync).await?;
    glommio::io::rename(&temporary, &path)
        .await
        .map_err(io_error("rename", &path))?;
    if sync {
        sync_dir(dir).await?;
    }
    Ok(())
}

/// Removes a file, ignoring that it may not exist.
pub async fn remove_if_exists(path: &Path) -> Result<()> {
    match glommio::io::remove(path).await {
        Ok(()) => Ok(()),
        Err(error) => {
            let error = std::io::Error::from(error);
            if error.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(io_error("remove", path)(error))
            }
        }
    }
}

/// Makes a directory's entries (new, renamed or removed files) durable.
pub async fn sync_dir(dir: &Path) -> Result<()> {
    let _permit = super::files::small_file_permit().await?;
    let handle = glommio::io::Directory::open(dir)
        .await
        .map_err(io_error("open directory", dir))?;
    handle
        .sync()
        .await
        .map_err(io_error("fsync directory", dir))?;
    handle
        .close()
        .await
        .map_err(io_error("close directory", dir))
}

fn corrupt(path: &Path, position: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_owned(),
        position,
        reason: reason.into(),
    }
}

/// How a segment scan ended.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    pub index: SegmentIndex,
    pub file_size: u64,
    /// Where and why the valid data ended before the end of the file.
    pub stop: Option<(u64, String)>,
    /// Each run of batches with one leader epoch: the epoch and its first batch's offset.
    epoch_starts: Vec<EpochStart>,
}

/// Scans a segment file from its start, reading it in chunks.
pub(crate) async fn scan_file(
    file: &DmaFile,
    path: &Path,
    base_offset: u64,
    interval: u32,
) -> Result<ScanOutcome> {
    let file_size = file.file_size().await.map_err(io_error("stat", path))?;
    let mut scanner = Scanner::new(base_offset, interval);
    let mut epoch_starts: Vec<EpochStart> = Vec::new();
    let mut observe = |_: u64, header: &BatchHeader, _: &[u8]| {
        if epoch_starts
            .last()
            .is_none_or(|e| e.epoch != header.leader_epoch)
        {
            epoch_starts.push(EpochStart {
                epoch: header.leader_epoch,
                start_offset: header.base_offset,
            });
        }
    };
    let mut want = SCAN_CHUNK_BYTES;
    loop {
        let position = scanner.position();
        if position >= file_size {
            return Ok(ScanOutcome {
                index: scanner.into_index(),
                file_size,
                stop: None,
                epoch_starts,
            });
        }
        let chunk_position = align_down(position);
        let len = (want as u64).min(file_size - chunk_position) as usize;
        let chunk = file
            .read_at(chunk_position, len)
            .await
            .map_err(io_error("read", path))?;
        let stop = match scanner.feed(&chunk, chunk_position, &mut observe) {
            Feed::NeedMore {
                position,
                len_at_least,
            } => {
                if position >= file_size {
                    None
                } else if position + len_at_least as u64 > file_size {
                    Some((
                        position,
                        format!(
                            "torn batch: {} bytes declared, {} present",
                            len_at_least,
                            file_size - position
                        ),
                    ))
                } else {
                    want = SCAN_CHUNK_BYTES.max(len_at_least + DMA_ALIGNMENT as usize);
                    glommio::yield_if_needed().await;
                    continue;
                }
            }
            Feed::Padding { position } => {
                if zeros_to_end(file, path, position, file_size).await? {
                    Some((position, "zero padding".to_string()))
                } else {
                    Some((
                        position,
                        "zeroed bytes followed by data (a torn write)".to_string(),
                    ))
                }
            }
            Feed::Invalid { position, reason } => Some((position, reason)),
        };
        return Ok(ScanOutcome {
            index: scanner.into_index(),
            file_size,
            stop,
            epoch_starts,
        });
    }
}

/// How an appended batch gets its base offset and leader epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// A leader's append: the log stamps its next offset and this epoch into the batch.
    Leader { leader_epoch: u32 },
    /// A follower's append of a batch copied from the leader: offsets and epoch are kept as
    /// they are (the batch must start at the log's next offset).
    Replica,
}

/// Where a read starts: a batch boundary and the base offset of the batch there (an index entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadStart {
    pub position: u64,
    pub base_offset: u64,
}

/// Whether every byte of the file from `from` to `file_size` is zero.
async fn zeros_to_end(file: &DmaFile, path: &Path, from: u64, file_size: u64) -> Result<bool> {
    let mut position = from;
    while position < file_size {
        let len = (SCAN_CHUNK_BYTES as u64).min(file_size - position) as usize;
        let data = file
            .read_at(position, len)
            .await
            .map_err(io_error("read", path))?;
        if data.is_empty() {
            return Ok(true);
        }
        if data.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        position += data.len() as u64;
        glommio::yield_if_needed().await;
    }
    Ok(true)
}

/// Reads whole batches from a segment file, starting with the batch that contains `offset`,
/// up to `max_bytes` (at least one batch), never past `readable_size`. Every batch looked at
/// must continue the offset sequence from `start`, and each returned batch's frame and CRC are
/// checked: damage is a [`StorageError::Corrupt`], never served.
pub(crate) async fn read_batches(
    file: &DmaFile,
    path: &Path,
    start: ReadStart,
    readable_size: u64,
    offset: u64,
    max_bytes: usize,
    index_interval: u32,
) -> Result<Option<ReadResult>> {
    let mut position = start.position;
    // The base offset the batch at `position` must have.
    let mut expected = start.base_offset;
    let mut want = max_bytes as u64 + u64::from(index_interval) + BATCH_HEADER_BYTES as u64;
    loop {
        if position >= readable_size {
            return Ok(None);
        }
        let len = want.min(readable_size - position) as usize;
        let data = file
            .read_at(position, len)
            .await
            .map_err(io_error("read", path))?;
        if data.len() < len {
            return Err(corrupt(
                path,
                position + data.len() as u64,
                "segment file is shorter than its logical size",
            ));
        }
        let mut at = 0usize;
        let mut first: Option<usize> = None;
        let mut restart: Option<(u64, u64, u64)> = None;
        let mut next_expected = expected;
        while data.len() - at >= BATCH_HEADER_BYTES {
            let batch_position = position + at as u64;
            let header = BatchHeader::parse(&data[at..])
                .map_err(|e| corrupt(path, batch_position, e.to_string()))?;
            let len = header.batch_len as usize;
            if batch_position + len as u64 > readable_size {
                return Err(corrupt(
                    path,
                    batch_position,
                    "batch runs past the end of the segment",
                ));
            }
            if header.base_offset != next_expected {
                return Err(corrupt(
                    path,
                    batch_position,
                    format!(
                        "base offset {} where {next_expected} was expected",
                        header.base_offset
                    ),
                ));
            }
            if header.next_offset() <= offset {
                // Before the wanted offset: skip (possibly beyond this read).
                if len > data.len() - at {
                    restart = Some((batch_position + len as u64, header.next_offset(), want));
                    break;
                }
                next_expected = header.next_offset();
                at += len;
                continue;
            }
            if len > data.len() - at {
                if first.is_none() {
                    restart = Some((batch_position, header.base_offset, len as u64));
                }
                break;
            }
            let taken = first.map_or(0, |f| at - f);
            if first.is_some() && taken + len > max_bytes {
                break;
            }
            validate_frame(&data[at..at + len])
                .map_err(|e| corrupt(path, batch_position, e.to_string()))?;
            first.get_or_insert(at);
            next_expected = header.next_offset();
            at += len;
            if at - first.unwrap_or(at) >= max_bytes {
                break;
            }
        }
        if let Some(first) = first {
            return Ok(ReadResult::slice(&data, first, at - first));
        }
        match restart {
            Some((next_position, next_base, next_want)) => {
                position = next_position;
                expected = next_base;
                want = next_want.max(want);
            }
            None => {
                if data.len() - at > 0 && position + data.len() as u64 >= readable_size {
                    return Err(corrupt(
                        path,
                        position + at as u64,
                        "partial batch header at the end",
                    ));
                }
                position += at as u64;
                expected = next_expected;
            }
        }
        glommio::yield_if_needed().await;
    }
}

/// A read-only segment. Its log file is opened on demand through the shard's descriptor cache
/// ([`super::files`]), keyed by the owning log's id.
#[derive(Debug)]
pub struct SealedSegment {
    log: u64,
    paths: SegmentPaths,
    index: SegmentIndex,
}

/// How [`SealedSegment::open`] treats zeros after the last batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// A segment sealed long ago: its file ends at its last batch; anything else is damage.
    Refused,
    /// The segment before the active one, whose background seal a crash may have cut short
    /// (`SealPlan`): zero padding after its last batch is cut, and its index files written.
    Cut,
}

impl SealedSegment {
    /// Opens a sealed segment of log `log` from its index files, or rebuilds them by scanning
    /// the log when they are missing or damaged. Damage in the log itself is a
    /// [`StorageError::Corrupt`]; zero padding is too unless `padding` says to cut it.
    pub async fn open(
        log: u64,
        dir: &Path,
        base_offset: u64,
        index_interval: u32,
        padding: Padding,
    ) -> Result<SealedSegment> {
        let paths = SegmentPaths::new(dir, base_offset);
        let size = std::fs::metadata(&paths.log)
            .map_err(io_error("stat", &paths.log))?
            .len();
        let offset_bytes = read_small_file(&paths.offset_index).await?;
        let time_bytes = read_small_file(&paths.time_index).await?;
        let decoded = match (offset_bytes, time_bytes) {
            (Some(offsets), Some(times)) => SegmentIndex::decode(base_offset, &offsets, &times)
                .and_then(|index| {
                    if index.size_bytes() == size {
                        Ok(index)
                    } else {
                        Err(format!(
                            "index covers {} bytes, the log has {size}",
                            index.size_bytes()
                        ))
                    }
                }),
            _ => Err("index files are missing".to_string()),
        };
        let index = match decoded {
            Ok(index) => index,
            Err(why) => {
                tracing::warn!(segment = %paths.log.display(), %why, "rebuilding segment index");
                let file = open_rw(&paths.log, false, false).await?;
                let outcome = scan_file(&file, &paths.log, base_offset, index_interval).await?;
                match outcome.stop {
                    None => {}
                    Some((position, reason))
                        if padding == Padding::Cut && reason == "zero padding" =>
                    {
                        file.truncate(position)
                            .await
                            .map_err(io_error("truncate", &paths.log))?;
                        file.fdatasync()
                            .await
                            .map_err(io_error("fdatasync", &paths.log))?;
                    }
                    Some((position, reason)) => {
                        return Err(corrupt(&paths.log, position, reason));
                    }
                }
                file.close().await.map_err(io_error("close", &paths.log))?;
                write_small_file(&paths.offset_index, &outcome.index.encode_offset_index()).await?;
                write_small_file(&paths.time_index, &outcome.index.encode_time_index()).await?;
                outcome.index
            }
        };
        if index.is_empty() {
            return Err(corrupt(&paths.log, 0, "sealed segment holds no batches"));
        }
        Ok(SealedSegment { log, paths, index })
    }

    /// A segment just written whole by compaction: its file (renamed into place, durable) and
    /// the index built while writing it.
    pub(crate) fn from_cleaned(
        log: u64,
        file: DmaFile,
        paths: SegmentPaths,
        index: SegmentIndex,
    ) -> SealedSegment {
        assert!(!index.is_empty(), "a cleaned segment holds batches");
        super::files::insert(log, index.base_offset(), Rc::new(file));
        SealedSegment { log, paths, index }
    }

    pub fn index(&self) -> &SegmentIndex {
        &self.index
    }

    pub fn paths(&self) -> &SegmentPaths {
        &self.paths
    }

    /// The segment's log file, open for reading (from the shard's descriptor cache).
    pub async fn file(&self) -> Result<Rc<DmaFile>> {
        super::files::open_sealed(self.log, self.index.base_offset(), &self.paths.log).await
    }

    /// Deletes the segment's files and forgets its descriptor (reads already under way keep
    /// theirs).
    pub async fn delete(&self) -> Result<()> {
        super::files::forget(self.log, self.index.base_offset());
        Self::delete_files(&self.paths).await
    }

    /// Deletes a segment's files (the open handle keeps serving reads already under way).
    pub async fn delete_files(paths: &SegmentPaths) -> Result<()> {
        remove_if_exists(&paths.log).await?;
        remove_if_exists(&paths.offset_index).await?;
        remove_if_exists(&paths.time_index).await
    }
}

/// What recovery found in the active segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRecovery {
    /// Bytes cut from the end of the segment because they held torn or corrupt batches.
    pub truncated_bytes: u64,
    /// Zero padding found after the last batch (left by direct writes of whole blocks).
    pub padding_bytes: u64,
    /// Why the valid data ended early, if it did (not reported for plain zero padding).
    pub reason: Option<String>,
    pub position: u64,
}

/// A buffer handed to the disk by [`ActiveSegment::take_flush`].
#[derive(Debug)]
pub struct FlushJob {
    pub file: Rc<DmaFile>,
    pub path: PathBuf,
    pub buf: Rc<DmaBuffer>,
    /// Aligned file position the buffer is written at.
    pub position: u64,
    /// Logical end of the segment once this job is written.
    pub end: u64,
    /// Next offset once this job is written.
    pub next_offset: u64,
    /// Batches in the buffer, for the tail cache.
    pub batches: Vec<CachedBatch>,
    /// Bytes of new data (excluding the block carried from the previous buffer).
    pub new_bytes: u64,
    /// Bytes the buffer was allocated with (`buf` is trimmed to what is written).
    pub capacity: usize,
}

/// How an active segment is extended ahead of its data, so that its flushes overwrite
/// allocated blocks instead of growing the file (see [`ActiveSegment::extension_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendBy {
    /// Zeros written (latency mode): the blocks are allocated *and* written, so a flush below
    /// them changes no metadata and its fdatasync is one device round trip.
    Zeros,
    /// `fallocate(2)` (throughput mode): allocated, unwritten blocks, no data written. A flush
    /// into them needs no block allocation and no change of the file's size, and marking the
    /// blocks written is journalled, which the shard's shared sync rounds make cheap. ext4
    /// still cannot start such a write without blocking, so io_uring hands most of them to its
    /// worker threads (85 % of flush writes over 1,000 partitions, counted with the
    /// `io_uring_queue_async_work` tracepoint); written zeros ahead avoid that (2.5 %) but
    /// moved no more MB/s and cost more over 10,000 partitions (`docs/benchmarks-intro.md`).
    Allocation,
}

/// Space added past an active segment's end ahead of its data. Recovery treats zeros after the
/// last batch as padding and cuts them (unwritten blocks read as zeros); sealing and closing
/// truncate the file to its logical size.
#[derive(Debug)]
pub struct Extension {
    file: Rc<DmaFile>,
    path: PathBuf,
    from: u64,
    to: u64,
    by: ExtendBy,
}

thread_local! {
    /// `ZERO_FILL_CHUNK_BYTES` of zeros, shared by every fill of this shard: a thousand logs
    /// extending at once write the same buffer instead of allocating a megabyte each.
    static ZEROS: std::cell::OnceCell<Rc<DmaBuffer>> = const { std::cell::OnceCell::new() };
}

/// Zeros are written in pieces of this size (the span of a fill is a multiple of it): one
/// write per fill of `SEGMENT_PREALLOCATE_BYTES`, since each write-through (`O_DSYNC`) piece
/// that extends the file costs a journal commit.
const ZERO_FILL_CHUNK_BYTES: u64 = crate::limits::SEGMENT_PREALLOCATE_BYTES;

/// Entries of a flush's batch list the next one starts with room for (a quiet log keeps it).
const PENDING_BATCHES_KEPT: usize = 64;

/// How far past a flush's end a throughput-mode segment is allocated: 16 × the flush's new
/// bytes, a power of two within `SEGMENT_ALLOCATE_AHEAD_MIN` and `SEGMENT_PREALLOCATE_BYTES`.
pub fn allocation_ahead(new_bytes: u64) -> u64 {
    new_bytes.saturating_mul(16).next_power_of_two().clamp(
        crate::limits::SEGMENT_ALLOCATE_AHEAD_MIN,
        crate::limits::SEGMENT_PREALLOCATE_BYTES,
    )
}

impl Extension {
    /// Extends the file (no fdatasync: the next flush's makes the new size durable). Zeros are
    /// written in `ZERO_FILL_CHUNK_BYTES` pieces from the shard's zero buffer. Returns whether
    /// the file was extended: an allocation the file system refuses (no space for the range
    /// ahead, or no `fallocate` support) is skipped, and the flush then grows the file itself.
    pub async fn apply(&self) -> Result<bool> {
        if self.by == ExtendBy::Allocation {
            return match self
                .file
                .pre_allocate_range(self.from, self.to - self.from)
                .await
            {
                Ok(()) => Ok(true),
                Err(error) => {
                    let error = std::io::Error::from(error);
                    match error.raw_os_error() {
                        Some(libc::ENOSPC | libc::EOPNOTSUPP) => Ok(false),
                        _ => Err(io_error("fallocate", &self.path)(error)),
                    }
                }
            };
        }
        let zeros = ZEROS.with(|z| {
            Rc::clone(z.get_or_init(|| {
                let mut zeros = self.file.alloc_dma_buffer(ZERO_FILL_CHUNK_BYTES as usize);
                zeros.as_bytes_mut().fill(0);
                Rc::new(zeros)
            }))
        });
        let mut at = self.from;
        while at < self.to {
            let written = self
                .file
                .write_rc_at(Rc::clone(&zeros), at)
                .await
                .map_err(io_error("write", &self.path))?;
            if written != ZERO_FILL_CHUNK_BYTES as usize {
                return Err(short_write(
                    &self.path,
                    written,
                    ZERO_FILL_CHUNK_BYTES as usize,
                ));
            }
            at += ZERO_FILL_CHUNK_BYTES;
        }
        Ok(true)
    }
}

/// Makes a segment's final form durable: truncated to its logical size, with index files.
#[derive(Debug)]
pub struct SealPlan {
    file: Rc<DmaFile>,
    paths: SegmentPaths,
    size: u64,
    offset_index: Vec<u8>,
    time_index: Vec<u8>,
}

impl SealPlan {
    /// Truncates, syncs and writes the index files, in that order: a crash at any step leaves
    /// a segment that recovery seals again (zero padding cut, index files rebuilt).
    pub async fn execute(self) -> Result<()> {
        let log = &self.paths.log;
        self.file
            .truncate(self.size)
            .await
            .map_err(io_error("truncate", log))?;
        seal_failpoint(SealStep::Truncated);
        self.file
            .fdatasync()
            .await
            .map_err(io_error("fdatasync", log))?;
        seal_failpoint(SealStep::Synced);
        write_small_file(&self.paths.offset_index, &self.offset_index).await?;
        seal_failpoint(SealStep::OffsetIndexWritten);
        write_small_file(&self.paths.time_index, &self.time_index).await?;
        seal_failpoint(SealStep::TimeIndexWritten);
        Ok(())
    }
}

/// The steps of a roll, in order: the failpoints the crash test kills the process at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealStep {
    /// The next segment exists (durably) and takes appends; the previous one is not sealed.
    NextCreated,
    /// The previous segment is truncated to its logical end (not yet synced).
    Truncated,
    /// ... and synced.
    Synced,
    /// Its `.index` file is written and synced.
    OffsetIndexWritten,
    /// Its `.timeindex` file too: the seal is complete.
    TimeIndexWritten,
}

impl SealStep {
    pub const ALL: [SealStep; 5] = [
        SealStep::NextCreated,
        SealStep::Truncated,
        SealStep::Synced,
        SealStep::OffsetIndexWritten,
        SealStep::TimeIndexWritten,
    ];
}

thread_local! {
    static SEAL_FAILPOINT: std::cell::Cell<Option<fn(SealStep)>> =
        const { std::cell::Cell::new(None) };
}

/// Installs a function called after each step of every roll on this thread (the crash test
/// kills its process from it); `None` removes it. A fault-injection point: the broker never
/// sets one.
pub fn set_seal_failpoint(hook: Option<fn(SealStep)>) {
    SEAL_FAILPOINT.with(|f| f.set(hook));
}

pub(crate) fn seal_failpoint(step: SealStep) {
    if let Some(hook) = SEAL_FAILPOINT.with(|f| f.get()) {
        hook(step);
    }
}

/// Whole batches of a segment file located without reading them: `[position, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchSpan {
    pub position: u64,
    pub end: u64,
}

/// What [`locate_batches`] looks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocateQuery<'a> {
    /// The indexed batch to scan from.
    pub start: ReadStart,
    /// The end of the durable batches in the file.
    pub readable: u64,
    pub offset: u64,
    pub max_bytes: usize,
    /// Indexed batch starts, ascending.
    pub boundaries: &'a [u64],
    pub index_interval: u32,
}

/// Finds the whole batches a read of `offset` with `max_bytes` returns, as a byte span of the
/// file, reading only batch headers: from `start` (an indexed batch) it scans at most one index
/// interval of headers to the batch containing `offset`, checking that every header continues
/// the offset sequence; the span then ends at the last batch boundary within `max_bytes` that
/// the scanned headers or `boundaries` (indexed batch starts, ascending) show, and always holds
/// at least that first batch. `None` when no batch at or after `offset` lies below `readable`.
pub(crate) async fn locate_batches(
    file: &DmaFile,
    path: &Path,
    query: LocateQuery<'_>,
) -> Result<Option<BatchSpan>> {
    let LocateQuery {
        start,
        readable,
        offset,
        max_bytes,
        boundaries,
        index_interval,
    } = query;
    // The batch holding `offset` starts within one index interval of `start`: one small read
    // usually finds its header.
    let window = align_up(u64::from(index_interval) + BATCH_HEADER_BYTES as u64);
    let mut position = start.position;
    let mut expected = start.base_offset;
    let mut first: Option<u64> = None;
    let mut end = 0u64;
    while position < readable {
        let len = window.min(readable - position) as usize;
        let data = file
            .read_at(position, len)
            .await
            .map_err(io_error("read", path))?;
        let mut at = 0usize;
        while data.len() - at >= BATCH_HEADER_BYTES {
            let batch_position = position + at as u64;
            let header = BatchHeader::parse(&data[at..])
                .map_err(|e| corrupt(path, batch_position, e.to_string()))?;
            if header.base_offset != expected {
                return Err(corrupt(
                    path,
                    batch_position,
                    format!(
                        "base offset {} where {expected} was expected",
                        header.base_offset
                    ),
                ));
            }
            let batch_end = batch_position + u64::from(header.batch_len);
            if batch_end > readable {
                return Err(corrupt(
                    path,
                    batch_position,
                    "batch runs past the end of the segment",
                ));
            }
            match first {
                None if header.next_offset() > offset => {
                    first = Some(batch_position);
                    end = batch_end;
                }
                None => {}
                Some(f) if batch_end - f <= max_bytes as u64 => end = batch_end,
                Some(_) => break,
            }
            expected = header.next_offset();
            if header.batch_len as usize > data.len() - at {
                // The next header lies beyond this read.
                at = data.len() + (batch_end - (position + data.len() as u64)) as usize;
                break;
            }
            at += header.batch_len as usize;
        }
        if let Some(f) = first {
            let limit = f + max_bytes as u64;
            let indexed = boundaries
                .iter()
                .copied()
                .filter(|&b| b <= limit.min(readable))
                .max()
                .unwrap_or(0);
            if readable <= limit {
                end = readable;
            } else {
                end = end.max(indexed);
            }
            return Ok(Some(BatchSpan { position: f, end }));
        }
        if at == 0 {
            return Err(corrupt(
                path,
                position,
                "batch header runs past the end of the segment",
            ));
        }
        position += at as u64;
        glommio::yield_if_needed().await;
    }
    Ok(None)
}

/// File position of the first batch whose offsets reach past `offset` (the batch containing it,
/// or the next one), scanning batch headers from `start` (a batch boundary) up to `readable`.
pub(crate) async fn find_batch_position(
    file: &DmaFile,
    path: &Path,
    start: u64,
    readable: u64,
    offset: u64,
) -> Result<u64> {
    let mut position = start;
    while position < readable {
        let len = (SCAN_CHUNK_BYTES as u64).min(readable - position) as usize;
        let data = file
            .read_at(position, len)
            .await
            .map_err(io_error("read", path))?;
        let mut at = 0usize;
        while data.len() - at >= BATCH_HEADER_BYTES {
            let header = BatchHeader::parse(&data[at..])
                .map_err(|e| corrupt(path, position + at as u64, e.to_string()))?;
            if header.next_offset() > offset {
                return Ok(position + at as u64);
            }
            if header.batch_len as usize > data.len() - at {
                break;
            }
            at += header.batch_len as usize;
        }
        if at == 0 {
            return Err(corrupt(
                path,
                position,
                "batch header runs past the end of the segment",
            ));
        }
        position += at as u64;
        glommio::yield_if_needed().await;
    }
    Ok(readable)
}

/// The segment being appended to.
#[derive(Debug)]
pub struct ActiveSegment {
    file: Rc<DmaFile>,
    paths: SegmentPaths,
    index: SegmentIndex,
    created_at: Instant,
    /// Sizes the write buffer taken when an append arrives.
    sizer: BufferSizer,
    /// The write buffer, while appends wait in it for a flush (none while the segment is quiet).
    pending: Option<WriteBuffer>,
    /// The carried partial block while there is no write buffer (at most one block).
    carry: Vec<u8>,
    /// An append found the buffer full since the last flush.
    overflowed: bool,
    /// Aligned file position of `pending[0]`.
    pending_position: u64,
    /// Bytes of `pending` in use, the carried partial block included.
    pending_len: usize,
    /// Bytes at the start of `pending` carried over from the previous buffer.
    pending_carried: usize,
    pending_batches: Vec<CachedBatch>,
    /// Logical bytes already handed to completed writes.
    written_size: u64,
    /// Size of the file: every block below it is allocated (data, zeros or an allocation made
    /// ahead by [`ActiveSegment::extension_for`]), so writes below it need no block allocation.
    file_size: u64,
}

impl ActiveSegment {
    /// Creates a new, empty active segment and makes its directory entry durable.
    pub async fn create(
        dir: &Path,
        base_offset: u64,
        index_interval: u32,
        buffer_bytes: usize,
        write_through: bool,
    ) -> Result<ActiveSegment> {
        let paths = SegmentPaths::new(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(dsync_flag(write_through))
            .dma_open(&paths.log)
            .await
            .map_err(io_error("create", &paths.log))?;
        sync_dir(dir).await?;
        Ok(ActiveSegment {
            file: Rc::new(file),
            paths,
            index: SegmentIndex::new(base_offset, index_interval),
            created_at: Instant::now(),
            sizer: BufferSizer::new(buffer_bytes),
            pending: None,
            carry: Vec::new(),
            overflowed: false,
            pending_position: 0,
            pending_len: 0,
            pending_carried: 0,
            pending_batches: Vec::new(),
            written_size: 0,
            file_size: 0,
        })
    }

    /// Opens the last segment of a partition: scans it whole, cuts it at the first torn,
    /// corrupt or out-of-sequence batch, and rebuilds its index in memory.
    /// Also returns the leader epochs of the batches kept, where each run of one epoch starts.
    pub async fn recover(
        dir: &Path,
        base_offset: u64,
        index_interval: u32,
        buffer_bytes: usize,
        write_through: bool,
    ) -> Result<(ActiveSegment, TailRecovery, Vec<EpochStart>)> {
        let paths = SegmentPaths::new(dir, base_offset);
        // Index files of the active segment are never trusted (it may have been sealed halfway).
        remove_if_exists(&paths.offset_index).await?;
        remove_if_exists(&paths.time_index).await?;
        let file = open_rw(&paths.log, false, write_through).await?;
        let outcome = scan_file(&file, &paths.log, base_offset, index_interval).await?;
        let end = outcome.index.size_bytes();
        let reason = outcome
            .stop
            .as_ref()
            .filter(|(_, reason)| reason != "zero padding")
            .map(|(_, reason)| reason.clone());
        let cut = outcome.file_size - end;
        let recovery = TailRecovery {
            truncated_bytes: if reason.is_some() { cut } else { 0 },
            padding_bytes: if reason.is_some() { 0 } else { cut },
            reason,
            position: end,
        };
        if end < outcome.file_size {
            if let Some(reason) = &recovery.reason {
                tracing::warn!(segment = %paths.log.display(), position = end, %reason,
                               cut_bytes = recovery.truncated_bytes, "cutting the log tail");
            }
            file.truncate(end)
                .await
                .map_err(io_error("truncate", &paths.log))?;
            file.fdatasync()
                .await
                .map_err(io_error("fdatasync", &paths.log))?;
        }
        let segment = Self::resume(file, paths, outcome.index, buffer_bytes).await?;
        Ok((segment, recovery, outcome.epoch_starts))
    }

    /// Opens the last segment of a cleanly closed partition with the index its clean-shutdown
    /// marker gave ([`super::marker`]): the file ends at the index's size, nothing is scanned.
    pub async fn reopen(
        dir: &Path,
        index: SegmentIndex,
        buffer_bytes: usize,
        write_through: bool,
    ) -> Result<ActiveSegment> {
        let paths = SegmentPaths::new(dir, index.base_offset());
        remove_if_exists(&paths.offset_index).await?;
        remove_if_exists(&paths.time_index).await?;
        let file = open_rw(&paths.log, false, write_through).await?;
        Self::resume(file, paths, index, buffer_bytes).await
    }

    /// An active segment whose file ends at `index`'s size: reads back the partial last block
    /// that the next write carries.
    async fn resume(
        file: DmaFile,
        paths: SegmentPaths,
        index: SegmentIndex,
        buffer_bytes: usize,
    ) -> Result<ActiveSegment> {
        let end = index.size_bytes();
        let mut carry = Vec::new();
        let pending_position = align_down(end);
        let carried = (end - pending_position) as usize;
        if carried > 0 {
            let block = file
                .read_at(pending_position, carried)
                .await
                .map_err(io_error("read", &paths.log))?;
            if block.len() != carried {
                return Err(corrupt(
                    &paths.log,
                    pending_position,
                    "short read of the last block",
                ));
            }
            carry.extend_from_slice(&block);
        }
        Ok(ActiveSegment {
            file: Rc::new(file),
            paths,
            index,
            created_at: Instant::now(),
            sizer: BufferSizer::new(buffer_bytes),
            pending: None,
            carry,
            overflowed: false,
            pending_position,
            pending_len: carried,
            pending_carried: carried,
            pending_batches: Vec::new(),
            written_size: end,
            file_size: end,
        })
    }

    pub fn index(&self) -> &SegmentIndex {
        &self.index
    }

    pub fn paths(&self) -> &SegmentPaths {
        &self.paths
    }

    pub fn file(&self) -> &Rc<DmaFile> {
        &self.file
    }

    pub fn created_at(&self) -> Instant {
        self.created_at
    }

    /// Logical bytes whose writes have completed: what reads may touch on disk.
    pub fn written_size(&self) -> u64 {
        self.written_size
    }

    /// Bytes appended but not yet handed to a write.
    pub fn unflushed_bytes(&self) -> u64 {
        (self.pending_len - self.pending_carried) as u64
    }

    /// Whether a batch of `len` bytes fits in the write buffer now, taking a buffer (or a
    /// bigger one) from the shard's budget when none holds unflushed batches. `false` means
    /// a flush must make room first.
    pub fn make_room(&mut self, len: usize) -> bool {
        let needed = self.pending_len + len;
        match &self.pending {
            Some(buf) if needed <= buf.capacity() => return true,
            Some(_) if !self.pending_batches.is_empty() => {
                self.overflowed = true;
                return false;
            }
            _ => {}
        }
        let mut buf = self.sizer.take(&self.file, needed);
        let carried = self.pending_len;
        match self.pending.take() {
            Some(old) => buf.as_bytes_mut()[..carried].copy_from_slice(&old.as_bytes()[..carried]),
            None => {
                assert_eq!(self.carry.len(), carried, "carried block out of step");
                buf.as_bytes_mut()[..carried].copy_from_slice(&self.carry);
                // Kept (under one block) for the next flush's carried block.
                self.carry.clear();
            }
        }
        self.pending = Some(buf);
        true
    }

    /// Capacity of the write buffer held now (0 while quiet).
    pub fn buffer_bytes(&self) -> usize {
        self.pending.as_ref().map_or(0, WriteBuffer::capacity)
    }

    /// Hands the buffer-size hint on to the segment that follows this one.
    pub fn continue_sizing(&mut self, previous: &ActiveSegment) {
        self.sizer = previous.sizer;
    }

    /// Copies a validated batch into the write buffer, stamping its offset and epoch as
    /// `how` says, and indexes it. The caller made room ([`ActiveSegment::make_room`]) and, for a
    /// replica's batch, that it starts at the next offset.
    pub fn append(&mut self, batch: &[u8], how: Stamp) -> BatchHeader {
        let start = self.pending_len;
        let Some(pending) = self
            .pending
            .as_mut()
            .filter(|p| start + batch.len() <= p.capacity())
        else {
            panic!("append without room in the write buffer");
        };
        let base_offset = self.index.next_offset();
        let dest = &mut pending.as_bytes_mut()[start..start + batch.len()];
        dest.copy_from_slice(batch);
        if let Stamp::Leader { leader_epoch } = how {
            stamp(dest, base_offset, leader_epoch);
        }
        let header = match BatchHeader::parse(dest) {
            Ok(header) => header,
            Err(error) => panic!("a validated batch no longer parses after stamping: {error}"),
        };
        assert_eq!(
            header.base_offset, base_offset,
            "a batch must start at the log's next offset"
        );
        let position = self.pending_position + start as u64;
        self.index.observe(position, &header);
        self.pending_len += batch.len();
        self.pending_batches.push(CachedBatch {
            base_offset,
            next_offset: header.next_offset(),
            start: start as u32,
            len: batch.len() as u32,
        });
        header
    }

    /// Hands the write buffer to the disk, if it holds new data, and starts a fresh one that
    /// carries the partial last block.
    pub fn take_flush(&mut self) -> Option<FlushJob> {
        if self.pending_batches.is_empty() {
            return None;
        }
        let end = self.index.size_bytes();
        assert_eq!(
            self.pending_position + self.pending_len as u64,
            end,
            "write buffer out of step with the index"
        );
        let aligned_len = align_up(self.pending_len as u64) as usize;
        let next_position = align_down(end);
        let carried = (end - next_position) as usize;
        let carried_from = (next_position - self.pending_position) as usize;
        let Some(pending) = self.pending.take() else {
            panic!("batches to flush without a write buffer");
        };
        let capacity = pending.capacity();
        self.carry.clear();
        self.carry
            .extend_from_slice(&pending.as_bytes()[carried_from..self.pending_len]);
        let mut buf = pending.into_dma();
        buf.as_bytes_mut()[self.pending_len..aligned_len].fill(0);
        buf.trim_to_size(aligned_len);
        // The next flush likely holds as many batches: its list starts with room for them (up
        // to a bound: a quiet log keeps the list).
        let room = self.pending_batches.len();
        let batches = std::mem::replace(
            &mut self.pending_batches,
            Vec::with_capacity(room.min(PENDING_BATCHES_KEPT)),
        );
        let new_bytes = self.unflushed_bytes();
        debug_assert_eq!(
            new_bytes,
            batches.iter().map(|b| u64::from(b.len)).sum::<u64>()
        );
        self.sizer.observe(
            self.pending_len,
            capacity,
            std::mem::take(&mut self.overflowed),
        );
        let job = FlushJob {
            capacity,
            file: Rc::clone(&self.file),
            path: self.paths.log.clone(),
            buf: Rc::new(buf),
            position: self.pending_position,
            end,
            next_offset: self.index.next_offset(),
            batches,
            new_bytes,
        };
        self.pending_position = next_position;
        self.pending_len = carried;
        self.pending_carried = carried;
        Some(job)
    }

    /// Records that a flush job's write completed.
    pub fn flushed(&mut self, job: &FlushJob) {
        assert!(job.end >= self.written_size, "flushes complete in order");
        self.written_size = job.end;
        self.file_size = self.file_size.max(job.position + job.buf.len() as u64);
    }

    /// The extension to make before `job` so that its write overwrites allocated blocks
    /// instead of growing the file, from the first whole block past the file's end. Zeros reach
    /// the next multiple of `SEGMENT_PREALLOCATE_BYTES` past the job's end, in whole
    /// `ZERO_FILL_CHUNK_BYTES` pieces; an allocation reaches [`allocation_ahead`] past it, so a
    /// log's allocations are few and its unused allocated space small, and starts with the
    /// segment's second flush. `None` when the job already fits in the file.
    pub fn extension_for(&self, job: &FlushJob, by: ExtendBy) -> Option<Extension> {
        let job_end = job.position + job.buf.len() as u64;
        if job_end <= self.file_size {
            return None;
        }
        // A segment's first flush grows the file itself: most partitions of a broker with
        // thousands are written rarely, and allocating ahead for one write would hold
        // `SEGMENT_ALLOCATE_AHEAD_MIN` of disk for each of them (640 MiB for 10,000).
        if by == ExtendBy::Allocation && self.file_size == 0 {
            return None;
        }
        let from = align_up(self.file_size);
        let to = match by {
            ExtendBy::Zeros => {
                let target = job_end.next_multiple_of(crate::limits::SEGMENT_PREALLOCATE_BYTES);
                from + (target.saturating_sub(from)).next_multiple_of(ZERO_FILL_CHUNK_BYTES)
            }
            ExtendBy::Allocation => align_up(job_end) + allocation_ahead(job.new_bytes),
        };
        Some(Extension {
            file: Rc::clone(&self.file),
            path: self.paths.log.clone(),
            from,
            to,
            by,
        })
    }

    /// Records that an [`Extension`] was made: the file now extends to its end.
    pub fn extended(&mut self, extension: &Extension) {
        self.file_size = self.file_size.max(extension.to);
    }

    /// What sealing needs, owned, so the caller can await it without borrowing the segment.
    /// All appended data must have been flushed.
    pub fn seal_plan(&self) -> SealPlan {
        assert!(
            self.pending_batches.is_empty(),
            "sealing with unflushed batches"
        );
        assert_eq!(
            self.written_size,
            self.index.size_bytes(),
            "sealing with unwritten data"
        );
        SealPlan {
            file: Rc::clone(&self.file),
            paths: self.paths.clone(),
            size: self.index.size_bytes(),
            offset_index: self.index.encode_offset_index(),
            time_index: self.index.encode_time_index(),
        }
    }

    /// Turns the segment into a sealed one of log `log` (its files are sealed by a
    /// [`SealPlan`], perhaps still under way); its descriptor goes to the shard's cache.
    pub fn into_sealed(self, log: u64) -> SealedSegment {
        super::files::insert(log, self.index.base_offset(), self.file);
        SealedSegment {
            log,
            paths: self.paths,
            index: self.index,
        }
    }
}
