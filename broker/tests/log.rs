//! Integration tests of the partition log on real files with O_DIRECT, on glommio executors.

mod common;

use std::time::Duration;

use common::{batch, run, stamped, test_dir};
use sluice_broker::storage::{FlushPolicy, LogConfig, OffsetSpec, PartitionLog, StorageError};
use sluice_protocol::{BatchError, BatchIter};

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        index_interval_bytes: 4096,
        batch_bytes_max: 16 << 10,
        write_buffer_bytes: 64 << 10,
        cache_bytes_max: 256 << 10,
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    }
}

#[test]
fn append_read_round_trip_and_reopen() {
    let dir = test_dir("roundtrip");
    let path = dir.path().join("t-0");
    run(move || async move {
        let (log, report) = PartitionLog::open(&path, small_config()).await.unwrap();
        assert_eq!((report.log_start, report.log_end), (0, 0));
        let mut expected = Vec::new();
        for i in 0..200u64 {
            let bytes = batch(
                i,
                1 + (i % 4) as u32,
                100 + (i as usize * 37) % 900,
                1000 + i as i64,
            );
            let appended = log.append_durable(&bytes, 7).await.unwrap();
            assert_eq!(
                appended.base_offset,
                expected.iter().map(|(_, n)| *n).sum::<u64>()
            );
            expected.push((
                stamped(bytes, appended.base_offset, 7),
                appended.last_offset - appended.base_offset + 1,
            ));
        }
        assert!(log.segment_count() > 3, "small segments roll");
        let all: Vec<u8> = expected.iter().flat_map(|(b, _)| b.clone()).collect();
        // Read everything back, in pieces, from cache and disk.
        let mut offset = 0;
        let mut got = Vec::new();
        while offset < log.high_watermark() {
            let read = log.read(offset, 3000).await.unwrap();
            let bytes = read.to_vec();
            for item in BatchIter::new(&bytes) {
                let (header, _) = item.unwrap();
                offset = header.next_offset();
            }
            got.extend_from_slice(&bytes);
        }
        assert_eq!(got, all);
        let end = log.next_offset();
        log.close().await.unwrap();

        let (log, report) = PartitionLog::open(&path, small_config()).await.unwrap();
        assert_eq!(report.log_end, end);
        assert_eq!(report.tail.truncated_bytes, 0);
        let mut got = Vec::new();
        let mut offset = 0;
        while offset < log.high_watermark() {
            let read = log.read(offset, 1 << 20).await.unwrap();
            assert!(!read.from_cache, "a reopened log reads from disk");
            let bytes = read.to_vec();
            for item in BatchIter::new(&bytes) {
                offset = item.unwrap().0.next_offset();
            }
            got.extend_from_slice(&bytes);
        }
        assert_eq!(got, all);
        let next = log.append_durable(&batch(999, 1, 10, 5), 7).await.unwrap();
        assert_eq!(next.base_offset, end);
        log.close().await.unwrap();
    });
}

/// The active segment's `.log` file under `dir` (the one file not yet sealed: the newest).
fn active_segment_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a segment file")
}

/// Throughput mode (interval flushes) allocates its active segment ahead of the data with
/// `fallocate` from the segment's second flush, so flushes overwrite allocated blocks instead of
/// growing the file: the file is
/// longer than its data, by at most `SEGMENT_PREALLOCATE_BYTES`, with blocks allocated behind
/// it. A crash leaves the allocated tail, which reads as zeros and which recovery treats as
/// padding; a clean close truncates the file to its data.
#[test]
fn throughput_mode_allocates_ahead_and_recovery_and_close_cut_it() {
    use std::os::unix::fs::MetadataExt;
    let dir = test_dir("allocate-ahead");
    let path = dir.path().join("t-0");
    let config = LogConfig {
        flush: FlushPolicy::Interval {
            interval: Duration::from_millis(1),
            bytes: 1 << 20,
        },
        ..small_config()
    };
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..20u64 {
            let bytes = batch(i, 2, 300, 1000 + i as i64);
            let appended = log.append_durable(&bytes, 3).await.unwrap();
            expected.push(stamped(bytes, appended.base_offset, 3));
            if i == 0 {
                // A segment's first flush allocates nothing ahead (a partition written once
                // holds no spare space): the file is its data in whole blocks.
                let len = std::fs::metadata(active_segment_file(&path)).unwrap().len();
                assert_eq!(len, (expected[0].len() as u64).next_multiple_of(4096));
            }
        }
        let data: u64 = expected.iter().map(|b| b.len() as u64).sum();
        let file = active_segment_file(&path);
        let meta = std::fs::metadata(&file).unwrap();
        assert!(
            meta.len() >= data.next_multiple_of(4096) + 4096,
            "allocated ahead: file {} bytes for {data} bytes of data",
            meta.len()
        );
        assert!(meta.len() <= data.next_multiple_of(4096) + (1 << 20));
        assert!(
            meta.blocks() * 512 >= meta.len(),
            "the blocks are allocated, not a hole: {} of {}",
            meta.blocks() * 512,
            meta.len()
        );
        let end = log.next_offset();
        // A crash: the log is dropped without closing, its file left as it is.
        drop(log);

        let (log, report) = PartitionLog::open(&path, config.clone()).await.unwrap();
        assert_eq!(report.log_end, end);
        let read = log.read(0, 1 << 20).await.unwrap();
        assert_eq!(
            read.to_vec(),
            expected.concat(),
            "every batch, nothing after"
        );
        let next = log
            .append_durable(&batch(99, 1, 50, 5000), 3)
            .await
            .unwrap();
        assert_eq!(next.base_offset, end);
        log.close().await.unwrap();
        let file = active_segment_file(&path);
        let len = std::fs::metadata(&file).unwrap().len();
        let (log, report) = PartitionLog::open(&path, config).await.unwrap();
        assert_eq!(report.log_end, end + 1);
        assert_eq!(report.tail.truncated_bytes, 0);
        let read = log.read(0, 1 << 20).await.unwrap().to_vec();
        assert_eq!(len, read.len() as u64, "closing cut the allocated tail");
        log.close().await.unwrap();
    });
}

#[test]
fn bad_input_is_a_typed_error_and_changes_nothing() {
    let dir = test_dir("badinput");
    let path = dir.path().join("t-0");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_config()).await.unwrap();
        log.append_durable(&batch(1, 2, 10, 1), 0).await.unwrap();
        let before = (log.next_offset(), log.size_bytes());
        let empty = sluice_protocol::BatchBuilder::new(Default::default()).finish();
        assert!(matches!(
            log.append(&empty, 0).await,
            Err(StorageError::InvalidBatch(BatchError::Empty))
        ));
        let huge = batch(2, 1, 20 << 10, 1);
        assert!(matches!(
            log.append(&huge, 0).await,
            Err(StorageError::InvalidBatch(BatchError::TooLarge { .. }))
        ));
        let mut flipped = batch(3, 1, 10, 1);
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            log.append(&flipped, 0).await,
            Err(StorageError::InvalidBatch(BatchError::CrcMismatch { .. }))
        ));
        assert!(matches!(
            log.append(&[1, 2, 3], 0).await,
            Err(StorageError::InvalidBatch(_))
        ));
        assert_eq!((log.next_offset(), log.size_bytes()), before);
        assert!(matches!(
            log.read(99, 100).await,
            Err(StorageError::OffsetOutOfRange { offset: 99, .. })
        ));
        assert!(
            log.read(2, 100).await.unwrap().is_empty(),
            "reading at the end is empty"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn group_commit_shares_flushes_between_concurrent_appends() {
    let dir = test_dir("groupcommit");
    let path = dir.path().join("t-0");
    run(move || async move {
        let config = LogConfig {
            flush: FlushPolicy::Interval {
                interval: Duration::from_millis(50),
                bytes: 64 << 20,
            },
            write_buffer_bytes: 16 << 20,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(&path, config).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                log.append_durable(&batch(i, 4, 256, 1), 0).await.unwrap()
            }));
        }
        let mut offsets: Vec<u64> = Vec::new();
        for task in tasks {
            offsets.push(task.await.base_offset);
        }
        offsets.sort_unstable();
        assert_eq!(offsets, (0..200).map(|i| i * 4).collect::<Vec<_>>());
        let stats = log.stats();
        assert_eq!(stats.appends, 200);
        assert!(
            stats.syncs < 20,
            "200 concurrent appends should share a few flushes, got {stats:?}"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn list_offsets_by_time_and_retention_and_truncation() {
    let dir = test_dir("retention");
    let path = dir.path().join("t-0");
    run(move || async move {
        let config = LogConfig {
            retention_bytes: Some(200 << 10),
            retention_ms: None,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(&path, config).await.unwrap();
        for i in 0..600u64 {
            log.append(&batch(i, 1, 900, 10_000 + i as i64 * 10), 0)
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
        assert_eq!(
            log.list_offset(OffsetSpec::Earliest).await.unwrap(),
            Some(0)
        );
        assert_eq!(
            log.list_offset(OffsetSpec::Latest).await.unwrap(),
            Some(600)
        );
        assert_eq!(
            log.list_offset(OffsetSpec::Timestamp(10_000 + 3000))
                .await
                .unwrap(),
            Some(300)
        );
        assert_eq!(
            log.list_offset(OffsetSpec::Timestamp(10_000 + 3005))
                .await
                .unwrap(),
            Some(301)
        );
        assert_eq!(
            log.list_offset(OffsetSpec::Timestamp(99_999_999))
                .await
                .unwrap(),
            None
        );

        let size_before = log.size_bytes();
        let report = log.enforce_retention(i64::MAX / 2).await.unwrap();
        assert!(report.segments_deleted > 0);
        assert!(log.size_bytes() <= 200 << 10 || log.segment_count() == 1);
        assert!(log.size_bytes() < size_before);
        let start = log.log_start();
        assert!(start > 0);
        assert!(matches!(
            log.read(start - 1, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            log.read(start, 100).await.unwrap().to_vec()[..8],
            start.to_be_bytes()
        );

        // Truncate into a sealed segment: it becomes the active one again.
        let bases = log.segment_bases();
        let cut = bases[1] + 3;
        assert_eq!(log.truncate_to(cut).await.unwrap(), cut);
        assert_eq!(log.segment_count(), 2);
        let appended = log.append_durable(&batch(7, 2, 10, 1), 1).await.unwrap();
        assert_eq!(appended.base_offset, cut);
        log.close().await.unwrap();
        let (log, report) = PartitionLog::open(
            &path,
            LogConfig {
                retention_bytes: None,
                ..small_config()
            },
        )
        .await
        .unwrap();
        assert_eq!(report.log_end, cut + 2);
        assert_eq!(report.log_start, start);
        log.close().await.unwrap();
    });
}

/// What the connection does for produce requests that carry several batches for one partition:
/// the reader appends each request's batches in order (a full buffer or a roll makes it wait),
/// then a task per request waits for each batch to be durable, in order; `in_flight` requests
/// are outstanding, and the reader pauses between requests as a socket read would. Returns the
/// base offsets the requests' batches got, in request order.
async fn produce_requests(
    log: PartitionLog,
    batches: Vec<Vec<u8>>,
    requests: usize,
    in_flight: usize,
) -> Vec<u64> {
    let mut pending = std::collections::VecDeque::new();
    let mut offsets = Vec::new();
    for _ in 0..requests {
        if pending.len() == in_flight {
            let task: glommio::task::JoinHandle<Vec<u64>> = pending.pop_front().unwrap();
            offsets.extend(task.await.unwrap());
        }
        glommio::timer::sleep(Duration::from_micros(300)).await;
        let mut appended = Vec::new();
        for bytes in &batches {
            appended.push(log.append(bytes, 0).await.unwrap());
        }
        let log = log.clone();
        pending.push_back(
            glommio::spawn_local(async move {
                for batch in &appended {
                    log.wait_durable(*batch).await.unwrap();
                }
                appended.iter().map(|a| a.base_offset).collect()
            })
            .detach(),
        );
    }
    while let Some(task) = pending.pop_front() {
        offsets.extend(task.await.unwrap());
    }
    offsets
}

/// Requests of five ~1 MiB batches for one partition, in the throughput mode's flush settings,
/// with segments small enough that a roll lands inside most requests: every request is
/// acknowledged, and offsets stay contiguous across the rolls. One request in flight is the
/// shape of a producer that sends all of a partition's in-flight batches in one request.
#[test]
fn several_batches_per_request_across_rolls_are_all_acknowledged() {
    for in_flight in [1usize, 5] {
        let dir = test_dir("multibatchroll");
        let path = dir.path().join("t-0");
        run(move || async move {
            let config = LogConfig {
                segment_bytes_max: 4 << 20,
                flush: FlushPolicy::Interval {
                    interval: Duration::from_millis(5),
                    bytes: 4 << 20,
                },
                write_buffer_bytes: 8 << 20,
                batch_bytes_max: 1 << 20,
                ..LogConfig::default()
            };
            let (log, _) = PartitionLog::open(&path, config).await.unwrap();
            // ~1,000,000 bytes each: not a multiple of the 4 KiB block, so flushes carry a
            // partial block into the next buffer.
            let batches: Vec<Vec<u8>> = (0..5u64).map(|i| batch(i, 16, 62_400, 1)).collect();
            let records: u64 = 16;
            let requests = 12usize;
            let work = produce_requests(log.clone(), batches, requests, in_flight);
            let outcome =
                glommio::timer::timeout(Duration::from_secs(30), async { Ok(work.await) }).await;
            let offsets = match outcome {
                Ok(offsets) => offsets,
                Err(_) => panic!(
                    "produce requests of several batches stalled ({in_flight} in flight): \
                     next offset {}, high watermark {}, {} segments, {:?}",
                    log.next_offset(),
                    log.high_watermark(),
                    log.segment_count(),
                    log.stats()
                ),
            };
            let expected: Vec<u64> = (0..(requests * 5) as u64).map(|i| i * records).collect();
            assert_eq!(offsets, expected);
            assert!(log.segment_count() > 10, "most requests roll a segment");
            assert_eq!(log.high_watermark(), log.next_offset());
            log.close().await.unwrap();
        });
    }
}

/// The bytes a [`SendRead`] stands for: memory chunks as they are, file spans read from the
/// segment file (through a fresh descriptor, as `sendfile` does).
fn send_read_bytes(read: &sluice_broker::storage::SendRead) -> Vec<u8> {
    use sluice_broker::storage::SendChunk;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    for chunk in &read.chunks {
        match chunk {
            SendChunk::Memory(bytes) => out.extend_from_slice(bytes.as_bytes()),
            SendChunk::File(range) => {
                let file = std::fs::File::open(format!("/proc/self/fd/{}", range.file.as_raw_fd()))
                    .unwrap();
                let mut buf = vec![0u8; range.len];
                file.read_exact_at(&mut buf, range.position).unwrap();
                out.extend_from_slice(&buf);
            }
        }
    }
    out
}

#[test]
fn reads_for_send_locate_the_same_whole_batches_as_reads() {
    let dir = test_dir("send");
    let path = dir.path().join("t-0");
    run(move || async move {
        let config = small_config();
        let (log, _) = PartitionLog::open(&path, config.clone()).await.unwrap();
        for i in 0..400u64 {
            let bytes = batch(
                i,
                1 + (i % 5) as u32,
                50 + (i as usize * 53) % 1500,
                i as i64,
            );
            log.append_durable(&bytes, 1).await.unwrap();
        }
        let end = log.next_offset();
        log.close().await.unwrap();
        // Reopened: an empty cache, so sealed segments are located in their files.
        let (log, _) = PartitionLog::open(&path, config).await.unwrap();
        assert!(log.segment_count() > 5, "small segments roll");
        let mut spans = 0;
        for offset in (0..end).step_by(7) {
            for max_bytes in [1usize, 900, 5000, 20_000, 1 << 20] {
                let expected = log.read(offset, max_bytes).await.unwrap();
                let sent = log.read_for_send(offset, max_bytes).await.unwrap();
                spans += sent
                    .chunks
                    .iter()
                    .filter(|c| matches!(c, sluice_broker::storage::SendChunk::File(_)))
                    .count();
                let bytes = send_read_bytes(&sent);
                assert_eq!(bytes.len(), sent.len_bytes());
                assert_eq!(sent.high_watermark, expected.high_watermark);
                // Whole, valid batches in sequence, the first one holding `offset`.
                let headers: Vec<_> = BatchIter::new(&bytes).map(|b| b.unwrap().0).collect();
                assert!(!headers.is_empty(), "offset {offset}: at least one batch");
                assert!(headers[0].base_offset <= offset && offset < headers[0].next_offset());
                for pair in headers.windows(2) {
                    assert_eq!(pair[0].next_offset(), pair[1].base_offset);
                }
                assert!(
                    bytes.len() <= max_bytes || headers.len() == 1,
                    "offset {offset}, max {max_bytes}: {} bytes in {} batches",
                    bytes.len(),
                    headers.len()
                );
                // The same bytes as the checked read, up to where the shorter one ends (a span
                // may end earlier: at an indexed batch, not at the last batch that fits).
                let checked = expected.to_vec();
                let common = bytes.len().min(checked.len());
                assert_eq!(bytes[..common], checked[..common], "offset {offset}");
                // ... but not much earlier: by at most an index interval and one batch.
                assert!(
                    bytes.len() + 4096 + (16 << 10) >= checked.len(),
                    "offset {offset}, max {max_bytes}: span {} against {}",
                    bytes.len(),
                    checked.len()
                );
            }
        }
        assert!(spans > 0, "some reads were served as file spans");
        log.close().await.unwrap();
    });
}
