//! The compaction pass of a [`PartitionLog`]: the effectful shell around [`compaction`]'s
//! pure rules. One pass:
//!
//! 1. **Map.** Reads every batch from the log start to the end of the active segment's written
//!    bytes, noting each idempotent producer's last batch, and maps key → latest offset for the
//!    batches at or after the first dirty offset and below the high watermark (a replica may
//!    still truncate what is above it) until the bounded map is full (`map_end`).
//! 2. **Clean.** Rewrites the sealed segments that end at or before `map_end` and the high
//!    watermark, oldest first,
//!    small consecutive ones merged into one file named by the first base offset (while the
//!    result stays within `segment_bytes_max`). A lone segment that would come out identical is
//!    left alone.
//! 3. **Swap**, per group, so that a crash at any point leaves a valid log:
//!    - write `{base}.log.cleaned` with direct I/O, truncate it to its logical size, fdatasync;
//!      write `{base}.index.cleaned` and `{base}.timeindex.cleaned` (each fdatasynced); fsync the
//!      directory — a crash here leaves `.cleaned` files, which recovery deletes;
//!    - rename `{base}.log.cleaned` to `{base}.log.swap`, fsync the directory: the **commit
//!      point** — recovery completes any swap it finds;
//!    - delete the group's other segments (newest first) and the first one's index files;
//!    - rename the two `.cleaned` index files into place;
//!    - rename `{base}.log.swap` over `{base}.log`, fsync the directory;
//!    - swap the in-memory segments (readers holding the old files keep reading them: Linux
//!      keeps an unlinked inode while it is open).
//!
//! Recovery ([`recover`], first thing `PartitionLog::open` does) completes every `.log.swap`:
//! it scans the swap file for the offsets it covers, deletes the segments it replaces (bases
//! inside that range but its own), moves both `.cleaned` index files into place if both exist
//! (else deletes the index files, which open then rebuilds from the log), renames the swap over
//! the log; then it deletes every other `.cleaned` file. Both branches are deterministic.
//!
//! The log start never moves, and every cleaned segment spans exactly the offsets of the
//! segments it replaces.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use sluice_protocol::batch::{declared_len, validate_frame};
use sluice_protocol::{BatchHeader, BATCH_HEADER_BYTES};

use super::PartitionLog;
use crate::limits::{COMPACTION_WRITE_BUFFER_BYTES, DMA_ALIGNMENT, SCAN_CHUNK_BYTES};
use crate::storage::compaction::{map_batch, CleanClock, CleanedSegment, OffsetMap, ProducerLasts};
use crate::storage::error::{io_error, Result, StorageError};
use crate::storage::index::SegmentIndex;
use crate::storage::scan::{parse_segment_file_name, segment_file_name};
use crate::storage::segment::{
    remove_if_exists, scan_file, sync_dir, write_small_file, SealedSegment, SegmentPaths,
};

/// What a compaction pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Sealed segments rewritten, and how many segments they became.
    pub segments_cleaned: usize,
    pub segments_written: usize,
    /// Bytes of the rewritten segments before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub batches_before: u64,
    pub batches_after: u64,
    /// Records dropped: older copies of a key, and tombstones past their delete horizon.
    pub records_removed: u64,
    /// Distinct keys the pass mapped.
    pub keys_mapped: usize,
    /// The key map filled before the end of the log: later passes clean the rest.
    pub map_full: bool,
    /// Offsets below this have been cleaned at least once.
    pub clean_end: u64,
}

/// The steps of a segment swap, in order (for the crash tests' failpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapStep {
    /// The `.cleaned` files are written and durable.
    CleanedWritten,
    /// `.log.cleaned` was renamed to `.log.swap` (the commit point).
    SwapRenamed,
    /// The replaced segments and the first one's index files are deleted.
    OldRemoved,
    /// The new index files are in place.
    IndexesRenamed,
    /// `.log.swap` was renamed over `.log`.
    Swapped,
}

#[cfg(test)]
thread_local! {
    /// A test's failpoint: the pass stops right after this step, as if the process died there.
    pub(crate) static STOP_AFTER: std::cell::Cell<Option<SwapStep>> =
        const { std::cell::Cell::new(None) };
}

fn failpoint(step: SwapStep) -> Result<()> {
    #[cfg(test)]
    if STOP_AFTER.with(|s| s.get()) == Some(step) {
        return Err(StorageError::Failed(format!(
            "failpoint: stopped after {step:?}"
        )));
    }
    let _ = step;
    Ok(())
}

fn corrupt(path: &Path, position: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_owned(),
        position,
        reason: reason.into(),
    }
}

/// The `.cleaned` and `.swap` names of the segment at `base`.
struct CleanedPaths {
    log: PathBuf,
    offset_index: PathBuf,
    time_index: PathBuf,
    swap: PathBuf,
}

impl CleanedPaths {
    fn new(dir: &Path, base: u64) -> CleanedPaths {
        CleanedPaths {
            log: dir.join(segment_file_name(base, "log.cleaned")),
            offset_index: dir.join(segment_file_name(base, "index.cleaned")),
            time_index: dir.join(segment_file_name(base, "timeindex.cleaned")),
            swap: dir.join(segment_file_name(base, "log.swap")),
        }
    }

    async fn remove_all(&self) -> Result<()> {
        remove_if_exists(&self.log).await?;
        remove_if_exists(&self.offset_index).await?;
        remove_if_exists(&self.time_index).await
    }
}

async fn rename(from: &Path, to: &Path) -> Result<()> {
    glommio::io::rename(from, to)
        .await
        .map_err(io_error("rename", to))
}

/// A segment as the pass saw it when it started.
#[derive(Debug, Clone)]
struct SegmentRef {
    base: u64,
    next: u64,
    /// Bytes of whole batches to read.
    size: u64,
    /// The active segment's file; a sealed one's is opened when read (descriptor cache).
    file: Option<Rc<DmaFile>>,
    path: PathBuf,
}

/// Reads a segment's batches in order, in large chunks, checking each one's frame, CRC and
/// offset continuity.
struct BatchReader {
    file: Rc<DmaFile>,
    path: PathBuf,
    end: u64,
    expected: u64,
    buf: Option<ReadResult>,
    /// File position of `buf[0]`.
    buf_position: u64,
    at: usize,
}

impl BatchReader {
    async fn open(log: u64, segment: &SegmentRef) -> Result<BatchReader> {
        let file = match &segment.file {
            Some(file) => Rc::clone(file),
            None => crate::storage::files::open_sealed(log, segment.base, &segment.path).await?,
        };
        Ok(BatchReader {
            file,
            path: segment.path.clone(),
            end: segment.size,
            expected: segment.base,
            buf: None,
            buf_position: 0,
            at: 0,
        })
    }

    async fn next(&mut self) -> Result<Option<(BatchHeader, ReadResult)>> {
        loop {
            let position = self.buf_position + self.at as u64;
            if position >= self.end {
                return Ok(None);
            }
            let rest: &[u8] = self.buf.as_ref().map_or(&[], |b| &b[self.at..]);
            let need = match declared_len(rest) {
                Some(len) if len < BATCH_HEADER_BYTES || len > u32::MAX as usize => {
                    return Err(corrupt(&self.path, position, "impossible batch length"))
                }
                Some(len) => len,
                None => BATCH_HEADER_BYTES,
            };
            if rest.len() >= need && need >= BATCH_HEADER_BYTES && declared_len(rest).is_some() {
                let header = validate_frame(&rest[..need])
                    .map_err(|e| corrupt(&self.path, position, e.to_string()))?;
                if header.base_offset != self.expected {
                    return Err(corrupt(
                        &self.path,
                        position,
                        format!(
                            "base offset {} where {} was expected",
                            header.base_offset, self.expected
                        ),
                    ));
                }
                let buf = self
                    .buf
                    .as_ref()
                    .expect("a parsed batch lies in the buffer");
                let batch = ReadResult::slice(buf, self.at, need)
                    .expect("a parsed batch lies in the buffer");
                self.at += need;
                self.expected = header.next_offset();
                return Ok(Some((header, batch)));
            }
            if position + need as u64 > self.end {
                return Err(corrupt(
                    &self.path,
                    position,
                    "batch runs past the end of the segment",
                ));
            }
            let len = (SCAN_CHUNK_BYTES.max(need) as u64).min(self.end - position) as usize;
            let data = self
                .file
                .read_at(position, len)
                .await
                .map_err(io_error("read", &self.path))?;
            if data.len() < len {
                return Err(corrupt(
                    &self.path,
                    position + data.len() as u64,
                    "segment file is shorter than its logical size",
                ));
            }
            self.buf = Some(data);
            self.buf_position = position;
            self.at = 0;
        }
    }
}

/// Writes a cleaned segment file with direct I/O, through one aligned buffer.
struct CleanedWriter {
    file: DmaFile,
    path: PathBuf,
    buf: DmaBuffer,
    len: usize,
    /// File position of `buf[0]` (aligned: every write but the last is a whole buffer).
    position: u64,
}

impl CleanedWriter {
    async fn create(path: &Path) -> Result<CleanedWriter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(path)
            .await
            .map_err(io_error("create", path))?;
        let buf = file.alloc_dma_buffer(COMPACTION_WRITE_BUFFER_BYTES);
        Ok(CleanedWriter {
            file,
            path: path.to_owned(),
            buf,
            len: 0,
            position: 0,
        })
    }

    async fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let n = (COMPACTION_WRITE_BUFFER_BYTES - self.len).min(bytes.len());
            self.buf.as_bytes_mut()[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == COMPACTION_WRITE_BUFFER_BYTES {
                self.write_buffer().await?;
            }
        }
        Ok(())
    }

    /// Writes the buffer (its last block padded with zeros) at its position.
    async fn write_buffer(&mut self) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let aligned = (self.len as u64).next_multiple_of(DMA_ALIGNMENT) as usize;
        let next = self.file.alloc_dma_buffer(COMPACTION_WRITE_BUFFER_BYTES);
        let mut buf = std::mem::replace(&mut self.buf, next);
        buf.as_bytes_mut()[self.len..aligned].fill(0);
        buf.trim_to_size(aligned);
        let written = self
            .file
            .write_at(buf, self.position)
            .await
            .map_err(io_error("write", &self.path))?;
        if written != aligned {
            return Err(StorageError::Io {
                op: "write",
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short direct write: {written} of {aligned} bytes"),
                ),
            });
        }
        self.position += self.len as u64;
        self.len = 0;
        Ok(())
    }

    /// Writes what is buffered, cuts the file to `size` and makes it durable.
    async fn finish(mut self, size: u64) -> Result<DmaFile> {
        self.write_buffer().await?;
        assert_eq!(
            self.position, size,
            "the cleaned file holds the whole segment"
        );
        self.file
            .truncate(size)
            .await
            .map_err(io_error("truncate", &self.path))?;
        self.file
            .fdatasync()
            .await
            .map_err(io_error("fdatasync", &self.path))?;
        Ok(self.file)
    }
}

/// A group of consecutive segments cleaned into one file, ready to swap in.
struct CleanedGroup {
    /// Base offsets of the segments it replaces.
    bases: Vec<u64>,
    file: DmaFile,
    index: SegmentIndex,
}

impl PartitionLog {
    /// Runs one compaction pass now (whatever the dirty ratio says) and reports what it did.
    /// `now_ms` is the current time in ms since the Unix epoch (it decides which tombstones
    /// are past their delete horizon). Appends, flushes, rolls and reads go on meanwhile;
    /// retention and truncation wait for the pass. A [`StorageError::Config`] on a log whose
    /// cleanup policy does not compact.
    pub async fn compact(&self, now_ms: i64) -> Result<CompactionReport> {
        let inner = &self.inner;
        if !inner.config.cleanup_policy.compacts() {
            return Err(StorageError::Config(
                "compaction asked of a log whose cleanup policy is delete".into(),
            ));
        }
        let _maintenance = inner
            .maintenance_lock
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)?;
        self.still_going()?;
        // The pass reads sealed segments' files: the one a roll is sealing must be done.
        self.wait_sealed().await?;
        self.compact_locked(now_ms).await
    }

    /// Whether the background cleaner should run a pass: the sealed segments not yet cleaned
    /// hold at least `compact_dirty_percent_min` of the sealed bytes, or a kept tombstone's
    /// delete horizon has passed.
    pub fn compaction_due(&self, now_ms: i64) -> bool {
        if !self.inner.config.cleanup_policy.compacts() {
            return false;
        }
        let state = self.inner.state.borrow();
        let total: u64 = state.sealed.iter().map(|s| s.index().size_bytes()).sum();
        let dirty: u64 = state
            .sealed
            .iter()
            .filter(|s| s.index().next_offset() > state.clean_end)
            .map(|s| s.index().size_bytes())
            .sum();
        let ratio = dirty > 0
            && dirty * 100 >= u64::from(self.inner.config.compact_dirty_percent_min) * total;
        ratio || state.tombstone_horizon_min.is_some_and(|h| now_ms >= h)
    }

    /// The background cleaner's step (called with retention): a pass if one is due.
    pub async fn compact_if_due(&self, now_ms: i64) -> Result<Option<CompactionReport>> {
        if !self.compaction_due(now_ms) {
            return Ok(None);
        }
        let report = self.compact(now_ms).await?;
        tracing::debug!(dir = %self.inner.dir.display(), ?report, "compacted");
        Ok(Some(report))
    }

    fn still_going(&self) -> Result<()> {
        if self.inner.closing.get() {
            return Err(StorageError::Closed);
        }
        self.inner.state.borrow().usable()
    }

    async fn compact_locked(&self, now_ms: i64) -> Result<CompactionReport> {
        let inner = &self.inner;
        let config = &inner.config;
        let (sealed, active, clean_end, high_watermark) = {
            let state = inner.state.borrow();
            let sealed: Vec<SegmentRef> = state
                .sealed
                .iter()
                .map(|s| SegmentRef {
                    base: s.index().base_offset(),
                    next: s.index().next_offset(),
                    size: s.index().size_bytes(),
                    file: None,
                    path: s.paths().log.clone(),
                })
                .collect();
            let active = SegmentRef {
                base: state.active.index().base_offset(),
                // Only written bytes are read; `next` is not used for the active segment.
                next: state.active.index().next_offset(),
                size: state.active.written_size(),
                file: Some(Rc::clone(state.active.file())),
                path: state.active.paths().log.clone(),
            };
            (
                sealed,
                active,
                state.clean_end.max(state.log_start),
                state.high_watermark(),
            )
        };
        let mut report = CompactionReport {
            clean_end,
            ..CompactionReport::default()
        };
        if sealed.is_empty() {
            return Ok(report);
        }

        // 1. Map: producers' last batches over the whole log, keys from the first dirty offset.
        let mut map = OffsetMap::new(config.compaction_keys_max);
        let mut producers = ProducerLasts::default();
        let mut map_end: Option<u64> = None;
        for segment in sealed.iter().chain(std::iter::once(&active)) {
            let mut reader = BatchReader::open(self.inner.id, segment).await?;
            while let Some((header, batch)) = reader.next().await? {
                producers.observe(&header);
                // Records above the high watermark may still be truncated away: they must not
                // shadow older ones.
                if map_end.is_none()
                    && header.base_offset >= clean_end
                    && header.next_offset() <= high_watermark
                    && !map_batch(&mut map, &header, &batch)
                {
                    map_end = Some(header.base_offset);
                }
                glommio::yield_if_needed().await;
            }
            self.still_going()?;
        }
        report.keys_mapped = map.len();
        report.map_full = map_end.is_some();
        let map_end = map_end.unwrap_or(u64::MAX);
        let cleanable: Vec<SegmentRef> = sealed
            .iter()
            .take_while(|s| s.next <= map_end && s.next <= high_watermark)
            .cloned()
            .collect();
        // A full map that covers no dirty segment would make no progress. (With no dirty
        // segment at all the pass still re-cleans the clean ones: tombstones expire there.)
        if report.map_full && !cleanable.iter().any(|s| s.next > clean_end) {
            tracing::warn!(dir = %inner.dir.display(), keys = map.len(),
                "compaction: the key map cannot cover one dirty segment; \
                 raise compaction_keys_max");
            return Ok(report);
        }

        // 2 and 3. Clean groups of segments and swap each in.
        let clock = CleanClock {
            now_ms,
            delete_retention_ms: config.delete_retention.as_millis() as i64,
        };
        let mut horizon_min: Option<i64> = None;
        let mut i = 0;
        while i < cleanable.len() {
            let first = &cleanable[i];
            let paths = CleanedPaths::new(&inner.dir, first.base);
            let written = self
                .clean_group(&cleanable[i..], &paths, &map, &producers, clock)
                .await;
            let (group, totals, bytes_before) = match written {
                Ok(Some(done)) => done,
                Ok(None) => {
                    // A lone segment that would come out the same: left as it is.
                    i += 1;
                    continue;
                }
                Err(error) => {
                    // Nothing was committed; the `.cleaned` files would be deleted on open.
                    let _ = paths.remove_all().await;
                    return Err(error);
                }
            };
            failpoint(SwapStep::CleanedWritten)?;
            let n = group.bases.len();
            let size_after = group.index.size_bytes();
            if let Err(error) = self.swap_in(group, &paths).await {
                // Past the commit point the files and the in-memory segments may disagree.
                let mut state = inner.state.borrow_mut();
                state.failed = Some(format!("compaction swap failed: {error}"));
                inner.flushed.notify();
                inner.space.notify();
                return Err(error);
            }
            if let Some(h) = totals.tombstone_horizon_min {
                horizon_min = Some(horizon_min.map_or(h, |m| m.min(h)));
            }
            report.segments_cleaned += n;
            report.segments_written += 1;
            report.bytes_before += bytes_before;
            report.bytes_after += size_after;
            report.batches_before += totals.batches_in;
            report.batches_after += totals.batches_out;
            report.records_removed += totals.records_removed;
            i += n;
        }
        let cleaned_to = cleanable.last().map_or(clean_end, |s| s.next);
        let mut state = inner.state.borrow_mut();
        state.clean_end = state.clean_end.max(cleaned_to);
        state.tombstone_horizon_min = if report.map_full {
            match (horizon_min, state.tombstone_horizon_min) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        } else {
            horizon_min
        };
        report.clean_end = state.clean_end;
        Ok(report)
    }

    /// Cleans `segments[0]` and as many of the following segments as fit with it into one
    /// `.cleaned` file set, durable. `None` when that is `segments[0]` alone and cleaning would
    /// not change it (nothing is left on disk then).
    async fn clean_group(
        &self,
        segments: &[SegmentRef],
        paths: &CleanedPaths,
        map: &OffsetMap,
        producers: &ProducerLasts,
        clock: CleanClock,
    ) -> Result<Option<(CleanedGroup, crate::storage::compaction::CleanTotals, u64)>> {
        let config = &self.inner.config;
        let first = &segments[0];
        let mut builder = CleanedSegment::new(first.base, config.index_interval_bytes);
        let mut writer = CleanedWriter::create(&paths.log).await?;
        let mut taken = 0;
        let mut bytes_before = 0;
        for segment in segments {
            if taken > 0 {
                // Room for the whole segment unchanged, and relative offsets within u32.
                let fits = builder.size_bytes() + BATCH_HEADER_BYTES as u64 + segment.size
                    <= config.segment_bytes_max
                    && segment.next - first.base < u64::from(u32::MAX);
                if !fits {
                    break;
                }
            }
            let mut reader = BatchReader::open(self.inner.id, segment).await?;
            while let Some((header, batch)) = reader.next().await? {
                builder.push(&header, &batch, map, producers, clock);
                if builder.output_len() >= COMPACTION_WRITE_BUFFER_BYTES {
                    writer.write(&builder.take_output()).await?;
                }
                glommio::yield_if_needed().await;
            }
            assert_eq!(
                builder.next_offset(),
                segment.next,
                "a cleaned segment spans the offsets it replaces"
            );
            self.still_going()?;
            taken += 1;
            bytes_before += segment.size;
        }
        let (index, totals) = builder.finish();
        writer.write(&builder.take_output()).await?;
        if taken == 1 && !totals.rewritten {
            drop(writer);
            remove_if_exists(&paths.log).await?;
            return Ok(None);
        }
        assert_eq!(index.base_offset(), first.base);
        let file = writer.finish(index.size_bytes()).await?;
        write_small_file(&paths.offset_index, &index.encode_offset_index()).await?;
        write_small_file(&paths.time_index, &index.encode_time_index()).await?;
        sync_dir(&self.inner.dir).await?;
        let group = CleanedGroup {
            bases: segments[..taken].iter().map(|s| s.base).collect(),
            file,
            index,
        };
        Ok(Some((group, totals, bytes_before)))
    }

    /// Swaps a durable cleaned group in for the segments it replaces, on disk (see the module
    /// doc for the steps and their crash cases) and in memory.
    async fn swap_in(&self, group: CleanedGroup, paths: &CleanedPaths) -> Result<()> {
        let inner = &self.inner;
        let dir = &inner.dir;
        let base = group.bases[0];
        let target = SegmentPaths::new(dir, base);
        rename(&paths.log, &paths.swap).await?;
        sync_dir(dir).await?;
        failpoint(SwapStep::SwapRenamed)?;
        for &base in &group.bases {
            crate::storage::files::forget(inner.id, base);
        }
        for &old in group.bases[1..].iter().rev() {
            SealedSegment::delete_files(&SegmentPaths::new(dir, old)).await?;
        }
        remove_if_exists(&target.offset_index).await?;
        remove_if_exists(&target.time_index).await?;
        failpoint(SwapStep::OldRemoved)?;
        rename(&paths.offset_index, &target.offset_index).await?;
        rename(&paths.time_index, &target.time_index).await?;
        failpoint(SwapStep::IndexesRenamed)?;
        rename(&paths.swap, &target.log).await?;
        sync_dir(dir).await?;
        failpoint(SwapStep::Swapped)?;

        let end = group.index.next_offset();
        let segment = SealedSegment::from_cleaned(inner.id, group.file, target, group.index);
        let mut state = inner.state.borrow_mut();
        let at = state
            .sealed
            .iter()
            .position(|s| s.index().base_offset() == base)
            .expect("the segments being cleaned stay in the log during the pass");
        for (k, &old) in group.bases.iter().enumerate() {
            assert_eq!(
                state.sealed.get(at + k).map(|s| s.index().base_offset()),
                Some(old),
                "the segments being cleaned stay in the log during the pass"
            );
        }
        let replaced_end = state.sealed[at + group.bases.len() - 1]
            .index()
            .next_offset();
        assert_eq!(
            replaced_end, end,
            "a cleaned segment spans what it replaces"
        );
        state.sealed.drain(at..at + group.bases.len());
        state.sealed.insert(at, segment);
        // The tail cache may still hold the replaced batches: tail reads start over from disk.
        if state.cache.first_offset().is_some_and(|first| first < end) {
            state.cache.clear();
        }
        Ok(())
    }
}

/// Completes or discards interrupted compaction work in a partition directory (see the module
/// doc). Called by `PartitionLog::open` before it lists the segments.
pub(super) async fn recover(dir: &Path, index_interval: u32) -> Result<()> {
    let names = list(dir).await?;
    let mut changed = false;
    for name in &names {
        if let Some((base, "log.swap")) = parse_segment_file_name(name) {
            complete_swap(dir, base, index_interval, &names).await?;
            changed = true;
        }
    }
    for name in list(dir).await? {
        if let Some((_, ext)) = parse_segment_file_name(&name) {
            if ext.ends_with(".cleaned") {
                tracing::info!(file = %name, "removing an unfinished compaction's file");
                remove_if_exists(&dir.join(&name)).await?;
                changed = true;
            }
        }
    }
    if changed {
        sync_dir(dir).await?;
    }
    Ok(())
}

async fn list(dir: &Path) -> Result<Vec<String>> {
    let owned = dir.to_owned();
    glommio::executor()
        .spawn_blocking(move || -> std::io::Result<Vec<String>> {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&owned)? {
                names.push(entry?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        })
        .await
        .map_err(io_error("list directory", dir))
}

/// Finishes the swap of `{base}.log.swap` (past its commit point when the crash came).
async fn complete_swap(dir: &Path, base: u64, interval: u32, names: &[String]) -> Result<()> {
    let paths = CleanedPaths::new(dir, base);
    let target = SegmentPaths::new(dir, base);
    let file = DmaFile::open(&paths.swap)
        .await
        .map_err(io_error("open", &paths.swap))?;
    let outcome = scan_file(&file, &paths.swap, base, interval).await?;
    file.close().await.map_err(io_error("close", &paths.swap))?;
    if let Some((position, reason)) = outcome.stop {
        // It was durable before it was renamed: damage here is real.
        return Err(corrupt(&paths.swap, position, reason));
    }
    let end = outcome.index.next_offset();
    tracing::info!(swap = %paths.swap.display(), end, "completing an interrupted compaction swap");
    for name in names {
        if let Some((other, ext)) = parse_segment_file_name(name) {
            let segment_file = matches!(ext, "log" | "index" | "timeindex");
            if segment_file && other > base && other < end {
                remove_if_exists(&dir.join(name)).await?;
            }
        }
    }
    let has = |ext: &str| names.contains(&segment_file_name(base, ext));
    let indexes = has("index.cleaned") && has("timeindex.cleaned");
    if indexes {
        rename(&paths.offset_index, &target.offset_index).await?;
        rename(&paths.time_index, &target.time_index).await?;
    } else {
        // Either may be the old segment's: `open` rebuilds them from the log.
        remove_if_exists(&target.offset_index).await?;
        remove_if_exists(&target.time_index).await?;
    }
    rename(&paths.swap, &target.log).await?;
    sync_dir(dir).await
}

#[cfg(test)]
mod tests {
    //! Crash safety of the swap: a pass stopped right after each step (the failpoint), as if
    //! the process died there, then the log reopened. Real files with O_DIRECT, so the
    //! directory is under the build's target directory (tmpfs refuses O_DIRECT).

    use super::*;
    use crate::storage::{CleanupPolicy, FlushPolicy, LogConfig};
    use sluice_protocol::{BatchBuilder, BatchIter, BatchOptions};
    use std::time::Duration;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn scratch(name: &str) -> PathBuf {
        let exe = std::env::current_exe().expect("test binary path");
        let target = exe
            .ancestors()
            .nth(2)
            .expect("target/<profile>/deps/<binary>")
            .join("unit-tmp");
        let dir = target.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes_max: 16 << 10,
            index_interval_bytes: 1024,
            batch_bytes_max: 8 << 10,
            write_buffer_bytes: 32 << 10,
            cache_bytes_max: 32 << 10,
            flush: FlushPolicy::Never,
            cleanup_policy: CleanupPolicy::Compact,
            delete_retention: Duration::from_secs(1),
            ..LogConfig::default()
        }
    }

    fn run<F, Fut, T>(make: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
        T: Send + 'static,
    {
        crate::shard::spawn_executor(glommio::LocalExecutorBuilder::default(), "test", make)
            .expect("spawn executor")
            .join()
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// The same log every time: 3000 updates of 20 keys, a few deleted, many segments.
    async fn write_log(dir: &Path) -> PartitionLog {
        let (log, _) = PartitionLog::open(dir, config()).await.unwrap();
        for i in 0..600u32 {
            let mut builder = BatchBuilder::new(BatchOptions::default());
            for j in 0..5u32 {
                let n = i * 5 + j;
                let key = format!("key-{}", n % 20);
                let value = format!("value-{n}-{}", "x".repeat((n % 13) as usize));
                let value = (n % 97 != 3).then_some(value.as_bytes());
                builder.push(
                    NOW_MS - 10_000 + i64::from(n),
                    Some(key.as_bytes()),
                    value,
                    &[],
                );
            }
            log.append(&builder.finish(), 1).await.unwrap();
        }
        log.flush().await.unwrap();
        assert!(log.segment_count() > 4, "the log spans several segments");
        log
    }

    async fn read_all(log: &PartitionLog) -> Vec<u8> {
        let mut offset = log.log_start();
        let mut out = Vec::new();
        while offset < log.high_watermark() {
            let bytes = log.read(offset, 1 << 20).await.unwrap().to_vec();
            for item in BatchIter::new(&bytes) {
                let (header, _) = item.expect("every batch read back is valid");
                assert_eq!(header.base_offset, offset, "offsets continue");
                offset = header.next_offset();
            }
            out.extend_from_slice(&bytes);
        }
        out
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
            .collect()
    }

    #[test]
    fn a_crash_at_every_step_of_the_swap_leaves_a_log_that_reads_the_same() {
        let steps = [
            SwapStep::CleanedWritten,
            SwapStep::SwapRenamed,
            SwapStep::OldRemoved,
            SwapStep::IndexesRenamed,
            SwapStep::Swapped,
        ];
        let root = scratch("swap-crash");
        let reference = root.join("reference");
        let (original, compacted) = run(move || async move {
            let log = write_log(&reference).await;
            let original = read_all(&log).await;
            let report = log.compact(NOW_MS).await.unwrap();
            assert!(report.records_removed > 0 && report.segments_cleaned > 0);
            let compacted = read_all(&log).await;
            assert!(compacted.len() < original.len() / 2);
            log.close().await.unwrap();
            (original, compacted)
        });
        for step in steps {
            let dir = root.join(format!("{step:?}"));
            let original = original.clone();
            let compacted = compacted.clone();
            run(move || async move {
                let log = write_log(&dir).await;
                STOP_AFTER.with(|s| s.set(Some(step)));
                let stopped = log.compact(NOW_MS).await;
                STOP_AFTER.with(|s| s.set(None));
                assert!(
                    matches!(&stopped, Err(StorageError::Failed(why)) if why.contains("failpoint")),
                    "{step:?}: {stopped:?}"
                );
                // The process "dies": nothing more happens to the files.
                drop(log);
                let (log, report) = PartitionLog::open(&dir, config()).await.unwrap();
                assert_eq!(report.log_start, 0, "{step:?}: the log start never moves");
                assert!(
                    leftovers(&dir).is_empty(),
                    "{step:?}: {:?}",
                    leftovers(&dir)
                );
                let read = read_all(&log).await;
                let expected = if step == SwapStep::CleanedWritten {
                    &original
                } else {
                    &compacted
                };
                assert!(
                    &read == expected,
                    "{step:?}: the reopened log reads differently"
                );
                // Compaction goes on from there and reaches the same log.
                log.compact(NOW_MS).await.unwrap();
                assert!(
                    read_all(&log).await == compacted,
                    "{step:?}: a later pass differs"
                );
                log.close().await.unwrap();
                // And a clean reopen accepts the cleaned segments.
                let (log, _) = PartitionLog::open(&dir, config()).await.unwrap();
                assert!(
                    read_all(&log).await == compacted,
                    "{step:?}: after a clean reopen"
                );
                log.close().await.unwrap();
            });
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
