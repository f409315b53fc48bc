//! Log compaction on real files with O_DIRECT, on glommio executors: a compacted log stays
//! bounded, keeps the latest record of every key, drops tombstones after their delete
//! retention (time is a parameter, never slept), serves reads at every offset, and reopens to
//! the same content. The swap's crash cases are the unit tests in `storage/log/cleaner.rs`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{run, test_dir};
use sluice_broker::storage::{CleanupPolicy, FlushPolicy, LogConfig, PartitionLog, StorageError};
use sluice_protocol::batch::validate_frame;
use sluice_protocol::BATCH_HEADER_BYTES;
use sluice_protocol::{BatchBuilder, BatchHeader, BatchIter, BatchOptions, RecordIter};

const NOW_MS: i64 = 1_700_000_000_000;
const KEYS: u32 = 100;
const VALUE_BYTES: usize = 40;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 32 << 10,
        index_interval_bytes: 1024,
        batch_bytes_max: 16 << 10,
        write_buffer_bytes: 64 << 10,
        cache_bytes_max: 64 << 10,
        flush: FlushPolicy::Never,
        cleanup_policy: CleanupPolicy::Compact,
        delete_retention: Duration::from_secs(60),
        ..LogConfig::default()
    }
}

fn key(k: u32) -> Vec<u8> {
    format!("key-{k:03}").into_bytes()
}

/// Update `n`'s value: its number, padded to `VALUE_BYTES`.
fn value(n: u64) -> Vec<u8> {
    let mut v = format!("update-{n}-").into_bytes();
    v.resize(VALUE_BYTES, b'.');
    v
}

/// A batch of `(key, value)` records, all timestamped `timestamp`.
fn batch(records: &[(Vec<u8>, Option<Vec<u8>>)], timestamp: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new(BatchOptions::default());
    for (key, value) in records {
        builder.push(timestamp, Some(key), value.as_deref(), &[]);
    }
    builder.finish()
}

/// Every record of the log: (offset, key, value), and the batches' headers, checking that the
/// batches are valid and continue the offset sequence from the log start.
type Records = Vec<(u64, Vec<u8>, Option<Vec<u8>>)>;

async fn read_all(log: &PartitionLog) -> (Records, Vec<BatchHeader>) {
    let mut offset = log.log_start();
    let mut records = Vec::new();
    let mut headers = Vec::new();
    while offset < log.high_watermark() {
        let bytes = log.read(offset, 256 << 10).await.unwrap().to_vec();
        assert!(
            !bytes.is_empty(),
            "a read at {offset} below the high watermark {} returns a batch",
            log.high_watermark()
        );
        for item in BatchIter::new(&bytes) {
            let (header, batch) = item.expect("every batch is valid");
            assert_eq!(header.base_offset, offset, "no offset gaps");
            for record in RecordIter::new(&header, &batch[BATCH_HEADER_BYTES..]) {
                let record = record.unwrap();
                records.push((
                    header.base_offset + u64::from(record.offset_delta),
                    record.key.unwrap().to_vec(),
                    record.value.map(<[u8]>::to_vec),
                ));
            }
            offset = header.next_offset();
            headers.push(header);
        }
    }
    assert!(
        records.windows(2).all(|w| w[0].0 < w[1].0),
        "offsets increase"
    );
    (records, headers)
}

/// Bytes of the sealed segments' `.log` files on disk.
fn sealed_bytes(log: &PartitionLog) -> u64 {
    let bases = log.segment_bases();
    bases[..bases.len() - 1]
        .iter()
        .map(|b| {
            let path = log.dir().join(format!("{b:020}.log"));
            std::fs::metadata(&path).unwrap().len()
        })
        .sum()
}

#[test]
fn a_hundred_thousand_updates_of_a_hundred_keys_stay_bounded() {
    let dir = test_dir("compact-bounded");
    let path = dir.path().join("offsets-0");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, config()).await.unwrap();
        let mut latest: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut passes = 0;
        let mut removed = 0;
        // 100,000 updates in batches of 10, keys in a shuffled order.
        for round in 0..10_000u64 {
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..10u64)
                .map(|j| {
                    let n = round * 10 + j;
                    let k = ((n * 37 + round / 7) % u64::from(KEYS)) as u32;
                    latest.insert(key(k), value(n));
                    (key(k), Some(value(n)))
                })
                .collect();
            log.append(&batch(&records, NOW_MS), 1).await.unwrap();
            if round % 500 == 499 {
                log.flush().await.unwrap();
                // The background cleaner's step: a pass only when the dirty ratio says so.
                if let Some(report) = log.compact_if_due(NOW_MS).await.unwrap() {
                    passes += 1;
                    removed += report.records_removed;
                    assert!(report.bytes_after < report.bytes_before);
                }
            }
        }
        log.flush().await.unwrap();
        assert!(passes >= 5, "the dirty ratio triggered {passes} passes");
        // Two more passes: the first cleans what is left, the second merges the small
        // segments the first left behind.
        for _ in 0..2 {
            removed += log.compact(NOW_MS).await.unwrap().records_removed;
        }
        assert_eq!(log.log_start(), 0, "compaction never moves the log start");
        let (records, headers) = read_all(&log).await;
        assert_eq!(records.last().map(|r| r.0), Some(99_999));
        assert_eq!(removed as usize, 100_000 - records.len());

        // Exactly the latest record of every key outside the active segment.
        let bases = log.segment_bases();
        let active_base = *bases.last().unwrap();
        let mut seen: HashMap<Vec<u8>, (u64, Option<Vec<u8>>)> = HashMap::new();
        for (offset, k, v) in &records {
            if *offset < active_base {
                assert!(
                    !seen.contains_key(k),
                    "a key appears once in the sealed segments"
                );
            }
            seen.insert(k.clone(), (*offset, v.clone()));
        }
        assert_eq!(seen.len(), KEYS as usize);
        for (k, (_, v)) in &seen {
            assert_eq!(v.as_ref(), latest.get(k), "the latest value survives");
        }
        let sealed_live = records.iter().filter(|r| r.0 < active_base).count();
        assert!(sealed_live <= KEYS as usize);

        // The bound: each live key's record in a batch of its own, one empty batch between
        // any two such batches and at each segment's start.
        // A record: length, attributes, timestamp delta (0), offset delta, key length, key
        // (`key-000`), value length, value, header count; every varint here is one byte.
        let record_bytes_max = 1 + 1 + 1 + 1 + 1 + 7 + 1 + VALUE_BYTES + 1;
        let sealed_segments = (bases.len() - 1) as u64;
        let bound = u64::from(KEYS) * (BATCH_HEADER_BYTES + record_bytes_max) as u64
            + (u64::from(KEYS) + sealed_segments) * BATCH_HEADER_BYTES as u64;
        let on_disk = sealed_bytes(&log);
        assert!(
            on_disk <= bound,
            "sealed segments hold {on_disk} bytes, more than the bound {bound}"
        );
        assert!(
            sealed_segments <= 2,
            "small cleaned segments merge: {bases:?}"
        );
        let sealed_batches = headers
            .iter()
            .filter(|h| h.base_offset < active_base)
            .count();
        assert!(
            sealed_batches <= 2 * sealed_live + sealed_segments as usize,
            "{sealed_batches} batches for {sealed_live} records: empty batches merge"
        );
        log.close().await.unwrap();

        // Reopened, it reads the same.
        let (log, report) = PartitionLog::open(&path, config()).await.unwrap();
        assert_eq!(report.log_start, 0);
        assert_eq!(read_all(&log).await.0, records);
        log.close().await.unwrap();
    });
}

#[test]
fn tombstones_go_after_their_delete_retention() {
    let dir = test_dir("compact-tombstones");
    let path = dir.path().join("offsets-0");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, config()).await.unwrap();
        let retention_ms = config().delete_retention.as_millis() as i64;
        let values: Vec<_> = (0..10)
            .map(|k| (key(k), Some(value(u64::from(k)))))
            .collect();
        log.append(&batch(&values, NOW_MS), 1).await.unwrap();
        let tombstones: Vec<_> = (0..5).map(|k| (key(k), None)).collect();
        log.append(&batch(&tombstones, NOW_MS), 1).await.unwrap();
        // Filler updates of one more key until the tombstones are in a sealed segment.
        let mut n = 100;
        while log.segment_count() < 3 {
            let filler = vec![(key(99), Some(value(n)))];
            log.append(&batch(&filler, NOW_MS), 1).await.unwrap();
            n += 1;
        }
        log.flush().await.unwrap();
        let tombstone_offsets: Vec<u64> = (10..15).collect();

        let first = log.compact(NOW_MS).await.unwrap();
        assert!(first.records_removed >= 5, "{first:?}");
        let (records, _) = read_all(&log).await;
        for k in 0..5 {
            let copies: Vec<_> = records.iter().filter(|r| r.1 == key(k)).collect();
            assert_eq!(copies.len(), 1, "only the tombstone of key {k} is left");
            assert_eq!(copies[0].2, None);
            assert!(tombstone_offsets.contains(&copies[0].0));
        }
        for k in 5..10 {
            assert!(records.iter().any(|r| r.1 == key(k) && r.2.is_some()));
        }

        // Just before the horizon nothing is due and a pass keeps them.
        assert!(!log.compaction_due(NOW_MS + retention_ms - 1));
        let early = log.compact(NOW_MS + retention_ms - 1).await.unwrap();
        assert_eq!(early.records_removed, 0, "{early:?}");
        assert_eq!(
            read_all(&log)
                .await
                .0
                .iter()
                .filter(|r| r.2.is_none())
                .count(),
            5
        );

        // At the horizon they are due, and go.
        assert!(log.compaction_due(NOW_MS + retention_ms));
        let report = log.compact_if_due(NOW_MS + retention_ms).await.unwrap();
        assert_eq!(report.map(|r| r.records_removed), Some(5));
        let (records, _) = read_all(&log).await;
        assert!(
            records.iter().all(|r| r.2.is_some()),
            "no tombstone is left"
        );
        for k in 0..5 {
            assert!(records.iter().all(|r| r.1 != key(k)), "key {k} is gone");
        }
        assert!(!log.compaction_due(NOW_MS + retention_ms));
        log.close().await.unwrap();
        let (log, _) = PartitionLog::open(&path, config()).await.unwrap();
        assert_eq!(read_all(&log).await.0, records);
        log.close().await.unwrap();
    });
}

#[test]
fn reads_at_every_offset_return_the_batch_spanning_it_then_the_survivors() {
    let dir = test_dir("compact-reads");
    let path = dir.path().join("offsets-0");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, config()).await.unwrap();
        for n in 0..3000u64 {
            let k = (n % 7) as u32 + if n % 500 == 0 { 1000 } else { 0 };
            log.append(&batch(&[(key(k), Some(value(n)))], NOW_MS), 1)
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
        log.compact(NOW_MS).await.unwrap();
        let (records, headers) = read_all(&log).await;
        assert!(
            headers
                .iter()
                .any(|h| h.record_count == 0 && h.last_offset_delta > 0),
            "emptied batches were merged"
        );
        for offset in 0..log.high_watermark() {
            let read = log.read(offset, 1).await.unwrap().to_vec();
            let first = validate_frame(&read).unwrap();
            assert!(
                first.base_offset <= offset && offset < first.next_offset(),
                "the first batch read at {offset} spans it"
            );
            // Reading on from there as a consumer does (each read starts where the last one's
            // batches end) reaches the next surviving record, within one read per segment.
            let next_survivor = records.iter().find(|r| r.0 >= offset).map(|r| r.0);
            let mut found = None;
            let mut at = offset;
            let mut reads = 0;
            while found.is_none() && at < log.high_watermark() {
                let read = log.read(at, 64 << 10).await.unwrap().to_vec();
                reads += 1;
                for item in BatchIter::new(&read) {
                    let (header, batch) = item.unwrap();
                    at = header.next_offset();
                    let mut offsets = RecordIter::new(&header, &batch[BATCH_HEADER_BYTES..])
                        .map(|r| header.base_offset + u64::from(r.unwrap().offset_delta));
                    if let Some(o) = offsets.find(|&o| o >= offset) {
                        found = Some(o);
                        break;
                    }
                }
            }
            assert_eq!(found, next_survivor, "at offset {offset}");
            assert!(
                reads <= log.segment_count(),
                "{reads} reads from offset {offset}"
            );
            // The zero-copy read locates the same first batch.
            let send = log.read_for_send(offset, 1).await.unwrap();
            assert!(send.len_bytes() > 0);
            if let Some(sluice_broker::storage::SendChunk::File(range)) = send.chunks.first() {
                let bytes = range
                    .file
                    .read_at(range.position, BATCH_HEADER_BYTES)
                    .await
                    .unwrap();
                let header = BatchHeader::parse(&bytes).unwrap();
                assert_eq!(header.base_offset, first.base_offset);
                assert_eq!(header.batch_len, first.batch_len);
            }
        }
        log.close().await.unwrap();
    });
}

#[test]
fn a_compacted_log_refuses_keyless_records_and_retention_deletes_nothing() {
    let dir = test_dir("compact-keyless");
    let path = dir.path().join("offsets-0");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, config()).await.unwrap();
        log.append(&batch(&[(key(1), Some(value(1)))], 0), 1)
            .await
            .unwrap();
        let before = (log.next_offset(), log.size_bytes());
        let mut builder = BatchBuilder::new(BatchOptions::default());
        builder.push(0, Some(b"k"), Some(b"v"), &[]);
        builder.push(0, None, Some(b"v"), &[]);
        assert!(matches!(
            log.append(&builder.finish(), 1).await,
            Err(StorageError::KeyRequired { index: 1 })
        ));
        assert_eq!((log.next_offset(), log.size_bytes()), before);
        while log.segment_count() < 3 {
            log.append(&batch(&[(key(2), Some(value(2)))], 0), 1)
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
        // Every record is far older than retention_ms: a compact-only log keeps them.
        let report = log.enforce_retention(i64::MAX / 2).await.unwrap();
        assert_eq!(report.segments_deleted, 0);
        log.close().await.unwrap();

        // A delete log takes keyless records and refuses an explicit pass.
        let other = dir.path().join("plain-0");
        let plain = LogConfig {
            cleanup_policy: CleanupPolicy::Delete,
            ..config()
        };
        let (log, _) = PartitionLog::open(&other, plain).await.unwrap();
        log.append(&batch(&[(key(1), Some(value(1)))], 0), 1)
            .await
            .unwrap();
        let mut builder = BatchBuilder::new(BatchOptions::default());
        builder.push(0, None, Some(b"v"), &[]);
        log.append(&builder.finish(), 1).await.unwrap();
        assert!(matches!(
            log.compact(NOW_MS).await,
            Err(StorageError::Config(_))
        ));
        assert!(!log.compaction_due(NOW_MS));
        log.close().await.unwrap();
    });
}

#[test]
fn a_follower_stores_the_empty_batches_of_a_compacted_leader() {
    let dir = test_dir("compact-replica");
    run(move || async move {
        let leader_path = dir.path().join("leader");
        let follower_path = dir.path().join("follower");
        let (leader, _) = PartitionLog::open(&leader_path, config()).await.unwrap();
        for n in 0..2000u64 {
            leader
                .append(&batch(&[(key((n % 3) as u32), Some(value(n)))], NOW_MS), 1)
                .await
                .unwrap();
        }
        leader.flush().await.unwrap();
        leader.compact(NOW_MS).await.unwrap();
        let (follower, _) = PartitionLog::open(&follower_path, config()).await.unwrap();
        let mut offset = 0;
        let mut empties = 0;
        while offset < leader.high_watermark() {
            let bytes = leader.read(offset, 4096).await.unwrap().to_vec();
            for item in BatchIter::new(&bytes) {
                let (header, batch) = item.unwrap();
                empties += usize::from(header.record_count == 0);
                follower.append_replica(batch).await.unwrap();
                offset = header.next_offset();
            }
        }
        assert!(empties > 0);
        follower.flush().await.unwrap();
        let expected = read_all(&leader).await;
        assert_eq!(read_all(&follower).await.0, expected.0);
        follower.close().await.unwrap();
        // The follower's active segment holds empty batches: recovery's scan accepts them.
        let (follower, report) = PartitionLog::open(&follower_path, config()).await.unwrap();
        assert_eq!(report.tail.truncated_bytes, 0);
        assert_eq!(read_all(&follower).await.0, expected.0);
        follower.close().await.unwrap();
        leader.close().await.unwrap();
    });
}

#[test]
fn records_above_the_high_watermark_shadow_nothing() {
    let dir = test_dir("compact-hw");
    let path = dir.path().join("offsets-0");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, config()).await.unwrap();
        log.append(&batch(&[(key(1), Some(value(1)))], NOW_MS), 1)
            .await
            .unwrap();
        let mut n = 2;
        while log.segment_count() < 3 {
            log.append(&batch(&[(key(2), Some(value(n)))], NOW_MS), 1)
                .await
                .unwrap();
            n += 1;
        }
        log.flush().await.unwrap();
        // Replication has committed only the first record; a newer copy of key 1 follows.
        log.set_high_watermark(1);
        log.append(&batch(&[(key(1), Some(value(999)))], NOW_MS), 1)
            .await
            .unwrap();
        log.flush().await.unwrap();
        log.compact(NOW_MS).await.unwrap();
        let first = log.read(0, 1).await.unwrap().to_vec();
        let header = validate_frame(&first).unwrap();
        assert_eq!(header.record_count, 1, "the committed record stays");
        // Once everything is committed, the older copies go.
        log.set_high_watermark(log.next_offset());
        let report = log.compact(NOW_MS).await.unwrap();
        assert!(report.records_removed > 0);
        let (records, _) = read_all(&log).await;
        let copies: Vec<_> = records.iter().filter(|r| r.1 == key(1)).collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].2, Some(value(999)));
        log.close().await.unwrap();
    });
}

#[test]
fn appends_and_reads_go_on_while_a_pass_runs() {
    let dir = test_dir("compact-concurrent");
    let path = dir.path().join("offsets-0");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, config()).await.unwrap();
        for n in 0..3000u64 {
            log.append(&batch(&[(key((n % 10) as u32), Some(value(n)))], NOW_MS), 1)
                .await
                .unwrap();
        }
        log.flush().await.unwrap();
        let writer = {
            let log = log.clone();
            glommio::spawn_local(async move {
                for n in 3000..6000u64 {
                    log.append(&batch(&[(key((n % 10) as u32), Some(value(n)))], NOW_MS), 1)
                        .await
                        .unwrap();
                    if n % 100 == 0 {
                        // Rolls and reads interleave with the pass's steps.
                        log.flush().await.unwrap();
                        log.read(0, 4096).await.unwrap();
                    }
                }
            })
        };
        let mut passes = 0;
        while passes < 5 {
            log.compact(NOW_MS).await.unwrap();
            passes += 1;
            glommio::yield_if_needed().await;
        }
        writer.await;
        log.flush().await.unwrap();
        log.compact(NOW_MS).await.unwrap();
        let (records, _) = read_all(&log).await;
        assert_eq!(records.last().map(|r| r.0), Some(5999));
        let active_base = *log.segment_bases().last().unwrap();
        for k in 0..10 {
            let last = records.iter().rev().find(|r| r.1 == key(k)).unwrap();
            assert_eq!(last.2, Some(value(5990 + u64::from(k))), "key {k}");
            let sealed_copies = records
                .iter()
                .filter(|r| r.1 == key(k) && r.0 < active_base)
                .count();
            assert!(sealed_copies <= 1, "key {k}: {sealed_copies} copies");
        }
        log.close().await.unwrap();
        let (log, _) = PartitionLog::open(&path, config()).await.unwrap();
        assert_eq!(read_all(&log).await.0, records);
        log.close().await.unwrap();
    });
}

#[test]
fn a_small_key_map_cleans_the_log_over_several_passes() {
    let dir = test_dir("compact-small-map");
    let path = dir.path().join("offsets-0");
    let small = LogConfig {
        compaction_keys_max: 1200,
        ..config()
    };
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small.clone()).await.unwrap();
        // 3000 distinct keys, each written twice: far more keys than the map holds.
        for round in 0..2u64 {
            for chunk in 0..300u32 {
                let records: Vec<_> = (0..10)
                    .map(|j| {
                        let k = chunk * 10 + j;
                        (key(k), Some(value(round * 10_000 + u64::from(k))))
                    })
                    .collect();
                log.append(&batch(&records, NOW_MS), 1).await.unwrap();
            }
        }
        log.flush().await.unwrap();
        let active_base = *log.segment_bases().last().unwrap();
        let mut passes = 0;
        let mut full = 0;
        loop {
            let report = log.compact(NOW_MS).await.unwrap();
            passes += 1;
            full += usize::from(report.map_full);
            assert!(report.keys_mapped <= 1200);
            if report.clean_end >= active_base || passes == 20 {
                break;
            }
        }
        assert!(full >= 2, "the map filled on {full} of {passes} passes");
        assert!(passes < 20, "the passes reach the active segment");
        let active_base = *log.segment_bases().last().unwrap();
        let (records, _) = read_all(&log).await;
        let mut seen = std::collections::HashSet::new();
        for (offset, k, v) in &records {
            if *offset < active_base {
                assert!(seen.insert(k.clone()), "one copy of each key is left");
                let n = String::from_utf8_lossy(&k[4..]).parse::<u64>().unwrap();
                assert_eq!(v.as_ref(), Some(&value(10_000 + n)), "the latest copy");
            }
        }
        log.close().await.unwrap();
    });
}

/// A tiny deterministic RNG (xorshift64*), enough for test choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Random sequences of appends, flushes, commits (the high watermark of a replicated log moving
/// on), compaction passes (time moving on), truncations of the uncommitted tail, retention and
/// reopenings against a model holding every record ever appended: whatever the log serves is a
/// record the model holds at that offset, offsets are contiguous from the log start, the latest
/// committed value of every key is never lost, and right after a pass each key has at most one
/// copy in the sealed segments wholly below the high watermark. Seeds are printed on failure;
/// `SLUICE_COMPACTION_SEED` replays one.
#[test]
fn random_operations_keep_the_compaction_invariants() {
    let seeds: Vec<u64> = match std::env::var("SLUICE_COMPACTION_SEED") {
        Ok(seed) => vec![seed.parse().expect("a u64 seed")],
        Err(_) => (1..=6).map(|i| 0x5eed_0000 + i).collect(),
    };
    for seed in seeds {
        let dir = test_dir("compact-model");
        let path = dir.path().join("offsets-0");
        let outcome = std::panic::catch_unwind(move || {
            run(move || async move { model_run(seed, &path).await });
        });
        if let Err(panic) = outcome {
            eprintln!("random_operations_keep_the_compaction_invariants failed: seed {seed}");
            std::panic::resume_unwind(panic);
        }
    }
}

async fn model_run(seed: u64, path: &std::path::Path) {
    let config = LogConfig {
        segment_bytes_max: 8 << 10,
        batch_bytes_max: 4 << 10,
        write_buffer_bytes: 16 << 10,
        index_interval_bytes: 512,
        cache_bytes_max: 16 << 10,
        flush: FlushPolicy::Never,
        cleanup_policy: CleanupPolicy::CompactDelete,
        retention_ms: None,
        retention_bytes: Some(48 << 10),
        delete_retention: Duration::from_millis(500),
        ..LogConfig::default()
    };
    let mut rng = Rng(seed | 1);
    let (mut log, _) = PartitionLog::open(path, config.clone()).await.unwrap();
    // Every record ever appended and not truncated away: offset → (key, value).
    let mut model: std::collections::BTreeMap<u64, (Vec<u8>, Option<Vec<u8>>)> = Default::default();
    let mut now = NOW_MS;
    let mut n = 0u64;
    // The committed end: replication's high watermark, moved on by the "commit" operation.
    let mut hw = 0u64;
    log.set_high_watermark(hw);
    // Batch ends: replication's high watermark is always one (a follower's durable end).
    let mut ends: std::collections::BTreeSet<u64> = Default::default();
    for step in 0..300 {
        let op = rng.below(100);
        let mut after_pass = false;
        if op < 55 {
            let count = 1 + rng.below(5);
            let records: Vec<_> = (0..count)
                .map(|_| {
                    n += 1;
                    let k = key(rng.below(40) as u32);
                    let v = (rng.below(10) != 0).then(|| value(n));
                    (k, v)
                })
                .collect();
            let appended = log.append(&batch(&records, now), 1).await.unwrap();
            for (i, record) in records.into_iter().enumerate() {
                model.insert(appended.base_offset + i as u64, record);
            }
            ends.insert(appended.last_offset + 1);
        } else if op < 65 {
            log.flush().await.unwrap();
        } else if op < 72 {
            log.flush().await.unwrap();
            let candidates: Vec<u64> = ends.range(hw..=log.durable_end()).copied().collect();
            if !candidates.is_empty() {
                hw = candidates[rng.below(candidates.len() as u64) as usize];
            }
            log.set_high_watermark(hw);
            assert_eq!(log.high_watermark(), hw);
        } else if op < 85 {
            log.flush().await.unwrap();
            now += rng.below(400) as i64;
            log.compact(now).await.unwrap();
            after_pass = true;
        } else if op < 90 {
            // Replication only ever cuts what is not committed.
            let (start, end) = (log.log_start().max(hw), log.next_offset());
            let cut = start + rng.below(end - start + 1);
            let new_end = log.truncate_to(cut).await.unwrap();
            assert!(
                new_end <= cut,
                "step {step}: truncation ends at or before the cut"
            );
            assert!(
                new_end >= hw,
                "step {step}: truncation keeps what is committed"
            );
            model.retain(|&o, _| o < new_end);
            ends.retain(|&e| e <= new_end);
        } else if op < 95 {
            log.enforce_retention(now).await.unwrap();
            hw = hw.max(log.log_start());
            log.set_high_watermark(hw);
        } else {
            log.close().await.unwrap();
            log = PartitionLog::open(path, config.clone()).await.unwrap().0;
            log.set_high_watermark(hw);
        }
        // What the log serves, against the model.
        log.flush().await.unwrap();
        let start = log.log_start();
        model.retain(|&o, _| o >= start);
        let (records, _) = read_all(&log).await;
        for (offset, k, v) in &records {
            assert_eq!(
                model.get(offset),
                Some(&(k.clone(), v.clone())),
                "step {step}: offset {offset} serves a record the model holds"
            );
        }
        assert!(
            records.iter().all(|r| r.0 < hw),
            "step {step}: reads stop at the high watermark"
        );
        let mut latest: HashMap<&[u8], u64> = HashMap::new();
        for (&offset, (k, _)) in model.range(..hw) {
            latest.insert(k, offset);
        }
        for (k, &offset) in &latest {
            let (_, v) = &model[&offset];
            if v.is_some() {
                assert!(
                    records.iter().any(|r| r.0 == offset),
                    "step {step}: the latest value of {} (offset {offset}) is served",
                    String::from_utf8_lossy(k)
                );
            }
        }
        if after_pass {
            // The segments a pass cleans: sealed ones wholly below the high watermark.
            let cleaned_end = log
                .segment_bases()
                .into_iter()
                .filter(|&b| b <= hw)
                .max()
                .unwrap_or(0);
            let mut seen = std::collections::HashSet::new();
            for (offset, k, _) in records.iter().filter(|r| r.0 < cleaned_end) {
                assert!(
                    seen.insert(k.clone()),
                    "step {step}: a second copy of {} at {offset} after a pass",
                    String::from_utf8_lossy(k)
                );
            }
        }
    }
    log.close().await.unwrap();
}
