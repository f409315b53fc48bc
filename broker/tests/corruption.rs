//! Damaged files on disk: what recovery cuts, what it rebuilds, and what it refuses.
//!
//! Each test writes a log through `PartitionLog`, closes it, damages its files with `std::fs`
//! (flipped bytes, torn or extended files, deleted or damaged index files, missing segments),
//! and checks what the next `PartitionLog::open` and reads make of it:
//! - the active segment is cut at the first damaged batch, and the cut is reported;
//! - damage in a sealed segment is a typed `Corrupt` error naming the file and the batch's
//!   position, at read time when the index files are intact, at open time when they must be
//!   rebuilt from the log;
//! - damaged or missing index files are rebuilt (with a warning), identical to the originals;
//! - a missing segment between two others fails the open.

mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{batch, run, stamped, test_dir};
use sluice_broker::storage::{
    FlushPolicy, LogConfig, OffsetSpec, PartitionLog, ReadBatches, RecoveryReport, StorageError,
};
use sluice_protocol::{BatchIter, BATCH_HEADER_BYTES};

const EPOCH: u32 = 3;
const TS0: i64 = 1_000_000;

fn config(segment_bytes_max: u64) -> LogConfig {
    LogConfig {
        segment_bytes_max,
        batch_bytes_max: 8 << 10,
        write_buffer_bytes: 64 << 10,
        index_interval_bytes: 1024,
        cache_bytes_max: 256 << 10,
        flush: FlushPolicy::Always,
        retention_ms: None,
        retention_bytes: None,
        ..LogConfig::default()
    }
}

/// Small segments: a few batches each, so a log has several sealed segments.
fn sealed_config() -> LogConfig {
    config(8 << 10)
}

/// One segment holds everything these tests write.
fn single_config() -> LogConfig {
    config(1 << 20)
}

/// A batch as the log holds it.
#[derive(Debug, Clone)]
struct Stored {
    base: u64,
    next: u64,
    bytes: Vec<u8>,
    /// Record timestamps, in offset order.
    timestamps: Vec<i64>,
}

/// Writes `count` batches of 1-4 records with increasing timestamps, and closes the log; then
/// deletes its clean-shutdown marker, as a crash would.
fn write_log(path: &Path, config: LogConfig, count: u64) -> Vec<Stored> {
    let dir = path.to_owned();
    let path = path.to_owned();
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, config).await.expect("open");
        let mut out = Vec::new();
        for i in 0..count {
            let records = 1 + (i % 4) as u32;
            let ts = TS0 + i as i64 * 10;
            let bytes = batch(i, records, 200 + (i as usize * 131) % 1000, ts);
            let appended = log.append_durable(&bytes, EPOCH).await.expect("append");
            out.push(Stored {
                base: appended.base_offset,
                next: appended.last_offset + 1,
                bytes: stamped(bytes, appended.base_offset, EPOCH),
                timestamps: (0..i64::from(records)).map(|r| ts + r).collect(),
            });
        }
        log.close().await.expect("close");
        out
    })
    .tap_crash(&dir)
}

trait TapCrash {
    /// Deletes the clean-shutdown marker the close left: damage to the active segment comes
    /// with a crash, which leaves none (a cleanly closed segment is trusted, as a sealed one is,
    /// and its damage found by reads' CRC checks).
    fn tap_crash(self, dir: &Path) -> Self;
}

impl TapCrash for Vec<Stored> {
    fn tap_crash(self, dir: &Path) -> Self {
        std::fs::remove_file(dir.join(sluice_broker::storage::marker::MARKER_FILE))
            .expect("a closed log has its clean-shutdown marker");
        self
    }
}

/// A batch found in a segment file.
#[derive(Debug, Clone, Copy)]
struct At {
    position: u64,
    base: u64,
    len: u64,
}

#[derive(Debug, Clone)]
struct Segment {
    base: u64,
    log: PathBuf,
    index: PathBuf,
    time_index: PathBuf,
    batches: Vec<At>,
}

/// The segments in `dir`, parsed with the protocol crate (not the storage code under test).
fn segments(dir: &Path) -> Vec<Segment> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
        .into_iter()
        .map(|base| {
            let log = dir.join(format!("{base:020}.log"));
            let bytes = std::fs::read(&log).expect("read segment");
            let mut batches = Vec::new();
            let mut position = 0u64;
            for item in BatchIter::new(&bytes) {
                let (header, b) = item.expect("a clean segment");
                batches.push(At {
                    position,
                    base: header.base_offset,
                    len: b.len() as u64,
                });
                position += b.len() as u64;
            }
            assert_eq!(
                position,
                bytes.len() as u64,
                "clean segments hold whole batches"
            );
            Segment {
                base,
                index: dir.join(format!("{base:020}.index")),
                time_index: dir.join(format!("{base:020}.timeindex")),
                log,
                batches,
            }
        })
        .collect()
}

fn flip(path: &Path, position: u64, mask: u8) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for damage");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, position).expect("read byte");
    byte[0] ^= mask;
    file.write_all_at(&byte, position).expect("write byte");
    file.sync_all().expect("sync");
}

fn set_len(path: &Path, len: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for damage");
    file.set_len(len).expect("set_len");
    file.sync_all().expect("sync");
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for damage");
    file.write_all(bytes).expect("append");
    file.sync_all().expect("sync");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

fn concat(batches: &[Stored]) -> Vec<u8> {
    batches
        .iter()
        .flat_map(|b| b.bytes.iter().copied())
        .collect()
}

/// Reads the whole log, from its start to the high watermark, checking contiguity.
async fn read_all(log: &PartitionLog, max_bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start();
    while offset < log.high_watermark() {
        let bytes = log
            .read(offset, max_bytes)
            .await
            .unwrap_or_else(|e| panic!("read at {offset}: {e}"))
            .to_vec();
        assert!(!bytes.is_empty());
        for item in BatchIter::new(&bytes) {
            let (header, _) = item.expect("a served batch is valid");
            assert_eq!(header.base_offset, offset, "contiguous batches");
            offset = header.next_offset();
        }
        out.extend_from_slice(&bytes);
    }
    out
}

/// Expected answer of `list_offset(Timestamp(ts))` over `batches` (timestamps increase).
fn expected_offset_for_time(batches: &[Stored], ts: i64) -> Option<u64> {
    batches.iter().find_map(|b| {
        b.timestamps
            .iter()
            .position(|&t| t >= ts)
            .map(|i| b.base + i as u64)
    })
}

/// Captures the log's `tracing` output (warnings and above) on the current thread.
#[derive(Debug, Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

#[derive(Debug)]
struct CapturedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sink = Arc::clone(&self.0);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || CapturedWriter(Arc::clone(&sink)))
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn take(&self) -> String {
        let mut bytes = self.0.lock().expect("capture lock");
        String::from_utf8_lossy(&std::mem::take(&mut *bytes)).into_owned()
    }
}

/// Opens the log, runs `check` on it and the recovery report, and closes it.
fn reopen<F, Fut>(path: &Path, config: LogConfig, check: F)
where
    F: FnOnce(PartitionLog, RecoveryReport) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let path = path.to_owned();
    run(move || async move {
        let (log, report) = PartitionLog::open(&path, config)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        check(log.clone(), report).await;
        log.close().await.expect("close");
    });
}

/// Opens the log expecting a `Corrupt` error; returns its path and position.
fn open_fails(path: &Path, config: LogConfig) -> (PathBuf, u64, String) {
    let path = path.to_owned();
    run(move || async move {
        match PartitionLog::open(&path, config).await {
            Ok((log, report)) => {
                log.close().await.expect("close");
                panic!("open succeeded on a damaged log: {report:?}")
            }
            Err(StorageError::Corrupt {
                path,
                position,
                reason,
            }) => (path, position, reason),
            Err(other) => panic!("expected a Corrupt error, got {other}"),
        }
    })
}

/// Recovery after damage at `position` of the active segment's batch `k`: the log ends before
/// batch `k`, the cut is reported, and everything before is intact and appendable.
fn expect_cut_at(path: &Path, written: &[Stored], k: usize, position: u64, size: u64, what: &str) {
    let kept = written[..k].to_vec();
    let cut_base = written[k].base;
    let first_what = what.to_string();
    // Everything sits in the first segment (the damaged file cannot be parsed here).
    let log_file = path.join(format!("{:020}.log", 0));
    reopen(path, single_config(), move |log, report| async move {
        let what = first_what;
        assert_eq!(report.log_end, cut_base, "{what}: {report:?}");
        assert_eq!(report.tail.position, position, "{what}: {report:?}");
        assert_eq!(
            report.tail.truncated_bytes,
            size - position,
            "{what}: {report:?}"
        );
        assert_eq!(report.tail.padding_bytes, 0, "{what}: {report:?}");
        assert!(report.tail.reason.is_some(), "{what}: {report:?}");
        assert_eq!(file_len(&log_file), position, "{what}: the file is cut");
        assert_eq!(log.next_offset(), cut_base);
        assert_eq!(log.high_watermark(), cut_base);
        assert_eq!(read_all(&log, 1500).await, concat(&kept), "{what}");
        // The log goes on from the cut.
        let appended = log
            .append_durable(&batch(999, 2, 50, TS0), EPOCH)
            .await
            .expect("append after the cut");
        assert_eq!(appended.base_offset, cut_base, "{what}");
    });
    let what = format!("{} (second open)", what);
    reopen(path, single_config(), move |_, report| async move {
        assert_eq!(report.log_end, cut_base + 2, "{what}");
        assert_eq!(report.tail.truncated_bytes, 0, "{what}: {report:?}");
        assert_eq!(report.tail.padding_bytes, 0, "{what}: {report:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// (a) The active segment's tail.

#[test]
fn flipped_bytes_in_the_active_segment_cut_the_log_at_that_batch() {
    // Header fields (except the leader epoch, which the CRC does not cover by design), records,
    // the last byte; in the last batch and in a batch in the middle.
    for (k, spot) in [
        (11, 0usize), // base offset: out of sequence
        (11, 5),
        (11, 8), // batch length
        (11, 11),
        (11, 16), // magic
        (11, 18), // reserved
        (11, 21), // crc
        (11, 24), // attributes
        (11, 29), // record count
        (11, 33), // first timestamp
        (11, 64), // first record
        (11, usize::MAX / 2),
        (11, usize::MAX),
        (5, 0),
        (5, 8),
        (5, 64),
        (5, usize::MAX),
    ] {
        let dir = test_dir("flip-active");
        let path = dir.path().join("t-0");
        let written = write_log(&path, single_config(), 12);
        let segs = segments(&path);
        assert_eq!(segs.len(), 1);
        let at = segs[0].batches[k];
        let offset = match spot {
            usize::MAX => at.len - 1,
            s if s == usize::MAX / 2 => at.len / 2,
            s => s as u64,
        };
        flip(&segs[0].log, at.position + offset, 0x04);
        let size = file_len(&segs[0].log);
        expect_cut_at(
            &path,
            &written,
            k,
            at.position,
            size,
            &format!("byte {offset} of batch {k} flipped"),
        );
    }
}

fn last_base(written: &[Stored]) -> u64 {
    written.last().expect("batches").base
}

#[test]
fn a_torn_tail_is_cut_at_the_last_whole_batch() {
    for cut in [1u64, 10, 63, 64, 65, 300, u64::MAX] {
        let dir = test_dir("torn");
        let path = dir.path().join("t-0");
        let written = write_log(&path, single_config(), 12);
        let seg = segments(&path).remove(0);
        let last = *seg.batches.last().expect("batches");
        let keep = cut.min(last.len - 1);
        set_len(&seg.log, last.position + keep);
        let torn = written.last().expect("batches").bytes[..keep as usize].to_vec();
        if torn.iter().all(|&b| b == 0) {
            // The first bytes of a batch are the high bytes of its big-endian base offset:
            // zeros, which look exactly like the zero padding after a log's end. Either reading
            // cuts the log at the same place, so only the report's wording differs.
            let (kept, cut_base) = (written[..written.len() - 1].to_vec(), last_base(&written));
            reopen(&path, single_config(), move |log, report| async move {
                assert_eq!(report.log_end, cut_base, "{report:?}");
                assert_eq!(report.tail.padding_bytes, keep, "{report:?}");
                assert_eq!(log.next_offset(), cut_base);
                assert_eq!(read_all(&log, 1500).await, concat(&kept));
                log.append_durable(&batch(999, 2, 50, TS0), EPOCH)
                    .await
                    .expect("append after the cut");
            });
            continue;
        }
        expect_cut_at(
            &path,
            &written,
            written.len() - 1,
            last.position,
            last.position + keep,
            &format!("file torn {keep} bytes into the last batch"),
        );
    }
}

#[test]
fn garbage_after_the_last_batch_is_cut() {
    let mut noise = Vec::new();
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..5000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push((x >> 24) as u8 | 1);
    }
    type Garbage = Box<dyn Fn(&[Stored]) -> Vec<u8>>;
    let cases: Vec<(&str, Garbage)> = vec![
        ("100 bytes of 0xa5", Box::new(|_| vec![0xa5; 100])),
        ("5000 random bytes", Box::new(move |_| noise.clone())),
        ("one non-zero byte", Box::new(|_| vec![7])),
        (
            "a copy of the last batch (valid CRC, repeated offsets)",
            Box::new(|w| w.last().expect("batches").bytes.clone()),
        ),
        (
            "a valid batch from the future (offsets skip ahead)",
            Box::new(|w| stamped(batch(77, 1, 10, TS0), w.last().expect("b").next + 5, 1)),
        ),
        (
            "a batch header whose length runs past the file",
            Box::new(|w| {
                let mut header = w.last().expect("batches").bytes[..BATCH_HEADER_BYTES].to_vec();
                header[..8].copy_from_slice(&w.last().expect("b").next.to_be_bytes());
                header
            }),
        ),
    ];
    for (what, garbage) in cases {
        let dir = test_dir("garbage");
        let path = dir.path().join("t-0");
        let mut written = write_log(&path, single_config(), 12);
        let seg = segments(&path).remove(0);
        let end = file_len(&seg.log);
        let garbage = garbage(&written);
        append_bytes(&seg.log, &garbage);
        // The cut starts after the last batch: pretend it is a batch to reuse the checks.
        let end_offset = written.last().expect("b").next;
        written.push(Stored {
            base: end_offset,
            next: end_offset,
            bytes: Vec::new(),
            timestamps: Vec::new(),
        });
        expect_cut_at(
            &path,
            &written,
            written.len() - 1,
            end,
            end + garbage.len() as u64,
            what,
        );
    }
}

#[test]
fn zero_padding_after_the_last_batch_is_not_a_cut() {
    for zeros in [1usize, 63, 64, 4000, 8192] {
        let dir = test_dir("padding");
        let path = dir.path().join("t-0");
        let written = write_log(&path, single_config(), 12);
        let seg = segments(&path).remove(0);
        let end = file_len(&seg.log);
        append_bytes(&seg.log, &vec![0; zeros]);
        let all = concat(&written);
        let end_offset = written.last().expect("b").next;
        let log_file = seg.log.clone();
        reopen(&path, single_config(), move |log, report| async move {
            assert_eq!(report.log_end, end_offset);
            assert_eq!(report.tail.truncated_bytes, 0, "{report:?}");
            assert_eq!(report.tail.padding_bytes, zeros as u64, "{report:?}");
            assert_eq!(report.tail.reason, None);
            assert_eq!(report.tail.position, end);
            assert_eq!(file_len(&log_file), end, "padding is removed");
            assert_eq!(read_all(&log, 4000).await, all);
        });
    }
}

/// Zeros where a batch header should be, with batches after them, are damage (what a torn
/// multi-block write or a lost block leaves), not the zero padding of a clean end: recovery
/// must report a cut with a reason, as `sluice log verify`'s scanner does ("zeroed header
/// followed by data"), rather than silently dropping the later batches as padding.
#[test]
fn a_zeroed_block_followed_by_batches_is_reported_as_a_cut() {
    for k in [5usize, 11] {
        let dir = test_dir("zeroed");
        let path = dir.path().join("t-0");
        let written = write_log(&path, single_config(), 12);
        let seg = segments(&path).remove(0);
        let at = seg.batches[k];
        let size = file_len(&seg.log);
        // Zero the batch's header and a little more; later bytes remain.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg.log)
            .expect("open");
        let zeros = vec![0u8; 100.min(at.len as usize - 1)];
        file.write_all_at(&zeros, at.position).expect("zero");
        file.sync_all().expect("sync");
        expect_cut_at(
            &path,
            &written,
            k,
            at.position,
            size,
            &format!("header of batch {k} zeroed, non-zero bytes after it"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (b) and (c) Sealed segments.

/// A log of several sealed segments; returns the batches and the segment files.
fn sealed_log(path: &Path) -> (Vec<Stored>, Vec<Segment>) {
    let written = write_log(path, sealed_config(), 60);
    let segs = segments(path);
    assert!(segs.len() >= 4, "small segments roll: {}", segs.len());
    assert!(segs[1].batches.len() >= 3);
    (written, segs)
}

fn stored_at(written: &[Stored], base: u64) -> usize {
    written
        .iter()
        .position(|b| b.base == base)
        .expect("a written batch")
}

#[test]
fn a_flip_in_a_sealed_segment_is_a_read_error_naming_file_and_position() {
    let dir = test_dir("flip-sealed");
    let path = dir.path().join("t-0");
    let (written, segs) = sealed_log(&path);
    let seg = segs[1].clone();
    let at = seg.batches[1];
    flip(&seg.log, at.position + at.len - 3, 0x10);
    let k = stored_at(&written, at.base);
    let later = stored_at(&written, segs[2].base);
    let written_clone = written.clone();
    reopen(&path, sealed_config(), move |log, report| async move {
        let written = written_clone;
        // The index files are trusted: the open does not read the data.
        assert_eq!(report.log_end, written.last().expect("b").next);
        assert_eq!(report.tail.truncated_bytes, 0);
        let expect_corrupt = |result: Result<ReadBatches, StorageError>, what: &str| match result {
            Err(StorageError::Corrupt { path, position, .. }) => {
                assert_eq!(path, seg.log, "{what}: the error names the segment file");
                assert_eq!(position, at.position, "{what}: and the batch's position");
            }
            Err(other) => panic!("{what}: expected Corrupt, got {other}"),
            Ok(read) => panic!(
                "{what}: damaged data was served ({} bytes)",
                read.len_bytes()
            ),
        };
        let damaged = &written[k];
        expect_corrupt(log.read(damaged.base, 1).await, "read at the batch");
        expect_corrupt(
            log.read(damaged.next - 1, 1).await,
            "read at its last offset",
        );
        expect_corrupt(
            log.read(written[k - 1].base, 1 << 20).await,
            "read through the batch",
        );
        expect_corrupt(
            log.read(seg.base, 1 << 20).await,
            "read from the segment start",
        );
        // Other batches still read.
        for (i, stored) in written.iter().enumerate() {
            if i == k {
                continue;
            }
            let read = log
                .read(stored.base, 1)
                .await
                .expect("an intact batch reads");
            assert_eq!(read.to_vec(), stored.bytes, "batch {i}");
        }
        let after = log
            .read(written[k + 1].base, 1 << 20)
            .await
            .expect("read after the damaged batch")
            .to_vec();
        assert!(after.starts_with(&written[k + 1].bytes));
        // A time lookup that must scan the damaged batch fails rather than skipping it.
        let ts = written[k].timestamps[0];
        assert!(matches!(
            log.list_offset(OffsetSpec::Timestamp(ts)).await,
            Err(StorageError::Corrupt { .. })
        ));
        // One whose scan starts in a later segment does not touch it.
        let ts = written[later].timestamps[0];
        assert_eq!(
            log.list_offset(OffsetSpec::Timestamp(ts)).await.unwrap(),
            Some(written[later].base)
        );
    });
}

/// The base offset is stamped by the broker and not covered by the CRC, so only its position
/// in the sequence shows damage there. A read that starts at the damaged batch (it sits at an
/// index entry) must not serve a batch that does not hold the offset asked for.
#[test]
fn a_flipped_base_offset_in_a_sealed_segment_is_not_served() {
    let dir = test_dir("flip-base");
    let path = dir.path().join("t-0");
    let (written, segs) = sealed_log(&path);
    let seg = segs[1].clone();
    let first = seg.batches[0];
    // Bit 32 of the base offset: the batch now claims offsets 2^32 later.
    flip(&seg.log, first.position + 4, 0x01);
    let expected = written[stored_at(&written, first.base)].clone();
    reopen(&path, sealed_config(), move |log, _| async move {
        for max_bytes in [1usize, 1 << 20] {
            match log.read(expected.base, max_bytes).await {
                Err(StorageError::Corrupt { path, position, .. }) => {
                    assert_eq!(path, seg.log);
                    assert_eq!(
                        position, first.position,
                        "the error names the damaged batch"
                    );
                }
                Err(other) => panic!("expected Corrupt, got {other}"),
                Ok(read) => {
                    let bytes = read.to_vec();
                    let header = sluice_protocol::BatchHeader::parse(&bytes).expect("a batch");
                    panic!(
                        "read at offset {} (max_bytes {max_bytes}) served a batch claiming base offset {}",
                        expected.base, header.base_offset
                    );
                }
            }
        }
    });
}

#[test]
fn a_flip_in_a_sealed_segment_without_its_index_fails_the_open() {
    for (seg_at, missing) in [
        (0usize, "index"),
        (1, "index"),
        (1, "timeindex"),
        (2, "both"),
    ] {
        let dir = test_dir("flip-noindex");
        let path = dir.path().join("t-0");
        let (_, segs) = sealed_log(&path);
        let seg = &segs[seg_at];
        let at = seg.batches[seg.batches.len() / 2];
        flip(&seg.log, at.position + 70, 0x01);
        if missing != "timeindex" {
            std::fs::remove_file(&seg.index).expect("remove .index");
        }
        if missing != "index" {
            std::fs::remove_file(&seg.time_index).expect("remove .timeindex");
        }
        let (file, position, reason) = open_fails(&path, sealed_config());
        assert_eq!(
            file, seg.log,
            "{missing} missing: the error names the segment"
        );
        assert_eq!(position, at.position, "{missing} missing: {reason}");
    }
}

#[test]
fn a_sealed_segment_that_disagrees_with_its_index_fails_the_open() {
    // Shorter than its index says: the index is rebuilt, and the scan finds the torn batch.
    let dir = test_dir("sealed-short");
    let path = dir.path().join("t-0");
    let (_, segs) = sealed_log(&path);
    let seg = &segs[1];
    let last = *seg.batches.last().expect("batches");
    set_len(&seg.log, last.position + last.len / 2);
    let (file, position, reason) = open_fails(&path, sealed_config());
    assert_eq!(
        (file, position),
        (seg.log.clone(), last.position),
        "{reason}"
    );

    // Longer: bytes after the last batch of a sealed segment are damage, not a tail to cut.
    let dir = test_dir("sealed-long");
    let path = dir.path().join("t-0");
    let (_, segs) = sealed_log(&path);
    let seg = &segs[1];
    let end = file_len(&seg.log);
    append_bytes(&seg.log, &[0x5a; 200]);
    let (file, position, reason) = open_fails(&path, sealed_config());
    assert_eq!((file, position), (seg.log.clone(), end), "{reason}");
}

// ---------------------------------------------------------------------------------------------
// (d) Index files.

#[derive(Debug, Clone, Copy)]
enum IndexDamage {
    FlipIndex(usize),
    TruncateIndex,
    EmptyIndex,
    FlipTimeIndex(usize),
    RemoveTimeIndex,
    RemoveBoth,
}

#[test]
fn damaged_or_missing_index_files_are_rebuilt() {
    use IndexDamage::*;
    for damage in [
        FlipIndex(0),
        FlipIndex(usize::MAX), // the trailer's recorded segment size
        TruncateIndex,
        EmptyIndex,
        FlipTimeIndex(3),
        RemoveTimeIndex,
        RemoveBoth,
    ] {
        let dir = test_dir("index");
        let path = dir.path().join("t-0");
        let (written, segs) = sealed_log(&path);
        let seg = segs[1].clone();
        let index = std::fs::read(&seg.index).expect("read .index");
        let time_index = std::fs::read(&seg.time_index).expect("read .timeindex");
        assert!(index.len() > 48 + 8, "the index has entries");
        match damage {
            FlipIndex(at) => flip(&seg.index, at.min(index.len() - 30) as u64, 1),
            TruncateIndex => set_len(&seg.index, index.len() as u64 / 2),
            EmptyIndex => set_len(&seg.index, 0),
            FlipTimeIndex(at) => flip(&seg.time_index, at as u64, 0x40),
            RemoveTimeIndex => std::fs::remove_file(&seg.time_index).expect("remove"),
            RemoveBoth => {
                std::fs::remove_file(&seg.index).expect("remove");
                std::fs::remove_file(&seg.time_index).expect("remove");
            }
        }
        let captured = Captured::default();
        let check = |first: bool| {
            let written = written.clone();
            let captured = captured.clone();
            let seg = seg.clone();
            let path = path.clone();
            run(move || async move {
                let guard = captured.install();
                let (log, report) = PartitionLog::open(&path, sealed_config())
                    .await
                    .unwrap_or_else(|e| panic!("{damage:?}: open: {e}"));
                drop(guard);
                let warnings = captured.take();
                let log_name = seg.log.display().to_string();
                if first {
                    assert!(
                        warnings.contains("rebuilding segment index")
                            && warnings.contains(&log_name),
                        "{damage:?}: a warning names the rebuilt segment; got {warnings:?}"
                    );
                } else {
                    assert!(
                        !warnings.contains("rebuilding"),
                        "{damage:?}: the rebuilt index is valid; got {warnings:?}"
                    );
                }
                assert_eq!(report.log_end, written.last().expect("b").next);
                assert_eq!(read_all(&log, 1).await, concat(&written), "{damage:?}");
                assert_eq!(read_all(&log, 3000).await, concat(&written), "{damage:?}");
                for stored in &written {
                    for (i, &ts) in stored.timestamps.iter().enumerate() {
                        assert_eq!(
                            log.list_offset(OffsetSpec::Timestamp(ts)).await.unwrap(),
                            Some(stored.base + i as u64),
                            "{damage:?}: time lookup {ts}"
                        );
                    }
                    let between = stored.timestamps[0] - 1;
                    assert_eq!(
                        log.list_offset(OffsetSpec::Timestamp(between))
                            .await
                            .unwrap(),
                        expected_offset_for_time(&written, between),
                    );
                }
                assert_eq!(
                    log.list_offset(OffsetSpec::Timestamp(i64::MAX))
                        .await
                        .unwrap(),
                    None
                );
                log.close().await.expect("close");
            });
        };
        check(true);
        assert_eq!(
            std::fs::read(&seg.index).expect("rebuilt .index"),
            index,
            "{damage:?}: the rebuilt .index equals the original"
        );
        assert_eq!(
            std::fs::read(&seg.time_index).expect("rebuilt .timeindex"),
            time_index,
            "{damage:?}: the rebuilt .timeindex equals the original"
        );
        check(false);
    }
}

// ---------------------------------------------------------------------------------------------
// (e) Missing segments.

#[test]
fn a_gap_between_segments_fails_the_open() {
    // A middle sealed segment, the last sealed one (before the active), and a middle `.log`
    // alone (its orphaned index files are cleaned up as leftovers, and the gap remains).
    for (victim, only_log) in [(1usize, false), (usize::MAX, false), (2, true)] {
        let dir = test_dir("gap");
        let path = dir.path().join("t-0");
        let (_, segs) = sealed_log(&path);
        let victim = if victim == usize::MAX {
            segs.len() - 2
        } else {
            victim
        };
        let seg = &segs[victim];
        std::fs::remove_file(&seg.log).expect("remove .log");
        if !only_log {
            std::fs::remove_file(&seg.index).expect("remove .index");
            std::fs::remove_file(&seg.time_index).expect("remove .timeindex");
        }
        let (file, position, reason) = open_fails(&path, sealed_config());
        assert_eq!(
            file,
            segs[victim + 1].log,
            "the error names the segment after the gap ({reason})"
        );
        assert_eq!(position, 0, "{reason}");
        assert!(!seg.index.exists() && !seg.time_index.exists());
    }
}

#[test]
fn a_missing_first_segment_is_a_later_log_start() {
    let dir = test_dir("nofirst");
    let path = dir.path().join("t-0");
    let (written, segs) = sealed_log(&path);
    for file in [&segs[0].log, &segs[0].index, &segs[0].time_index] {
        std::fs::remove_file(file).expect("remove");
    }
    let start = segs[1].base;
    let kept: Vec<Stored> = written.into_iter().filter(|b| b.base >= start).collect();
    reopen(&path, sealed_config(), move |log, report| async move {
        assert_eq!(report.log_start, start);
        assert_eq!(log.log_start(), start);
        assert!(matches!(
            log.read(start - 1, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(read_all(&log, 2000).await, concat(&kept));
    });
}
