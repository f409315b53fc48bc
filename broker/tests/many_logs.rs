//! Many partition logs on one shard (executor thread): what their memory, descriptors and
//! restarts cost, against the shard's budgets (`storage/buffers.rs`, `cache.rs`, `files.rs`)
//! and the clean-shutdown marker (`marker.rs`).

mod common;

use common::{batch, run, stamped, test_dir};
use sluice_broker::storage::{buffers, cache, files, sync, FlushPolicy, LogConfig, PartitionLog};

const LOGS: usize = 500;
const BATCHES: u64 = 4;
const FILES_MAX: usize = 64;
const CACHE_BYTES_MAX: usize = 1 << 20;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 1024,
        batch_bytes_max: 4096,
        write_buffer_bytes: 1 << 20,
        flush: FlushPolicy::Interval {
            interval: std::time::Duration::from_millis(2),
            bytes: 1 << 20,
        },
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Every batch of `log` from offset 0, read from disk (the cache holds little).
async fn read_all(log: &PartitionLog) -> Vec<u8> {
    let mut offset = 0;
    let mut out = Vec::new();
    while offset < log.high_watermark() {
        let read = log.read(offset, 1 << 20).await.expect("read");
        for item in sluice_protocol::BatchIter::new(&read.to_vec()) {
            let (header, bytes) = item.expect("a whole batch");
            offset = header.next_offset();
            out.extend_from_slice(bytes);
        }
    }
    out
}

#[test]
fn five_hundred_logs_share_the_shards_budgets_and_reopen_without_scans() {
    let dir = test_dir("many-logs");
    let root = dir.path().to_owned();
    run(move || async move {
        files::set_files_max(FILES_MAX);
        cache::set_shard_cache_bytes_max(CACHE_BYTES_MAX);
        let before = open_descriptors();
        let mut logs = Vec::new();
        for i in 0..LOGS {
            let (log, report) = PartitionLog::open(root.join(format!("p-{i}")), config())
                .await
                .expect("open");
            assert!(report.scanned, "a new log has no marker");
            logs.push(log);
        }
        // Every log rolls (each ~1.5 KiB batch in a 4 KiB segment: three per segment).
        let mut expected: Vec<Vec<u8>> = vec![Vec::new(); LOGS];
        for round in 0..BATCHES {
            let mut pending = Vec::new();
            for (i, log) in logs.iter().enumerate() {
                let bytes = batch(i as u64 * 100 + round, 2, 700, 1000 + round as i64);
                let appended = log.append(&bytes, 3).await.expect("append");
                pending.push((i, appended, bytes));
            }
            for (i, appended, bytes) in pending {
                logs[i].wait_durable(appended).await.expect("durable");
                expected[i].extend(stamped(bytes, appended.base_offset, 3));
            }
        }
        assert!(
            logs.iter().all(|l| l.segment_count() >= 2),
            "every log rolled"
        );
        // The logs' flushes shared the shard's sync rounds: far fewer syncs than flushes.
        let syncs = sync::shard_sync_stats();
        assert!(syncs.files >= (LOGS as u64) * BATCHES, "{syncs:?}");
        assert!(
            (syncs.syncfs_rounds + syncs.fdatasync_rounds) * 2 < syncs.files,
            "{syncs:?}"
        );
        // Quiet: no log holds a write buffer; the cache is within the shard's budget.
        assert_eq!(
            buffers::shard_write_buffer_bytes(),
            0,
            "quiet logs hold no buffer"
        );
        assert!(cache::shard_cache_bytes() <= CACHE_BYTES_MAX);
        for (i, log) in logs.iter().enumerate() {
            assert_eq!(read_all(log).await, expected[i], "log {i}");
        }
        let (cached, opened) = files::stats();
        assert!(cached <= FILES_MAX, "{cached} sealed descriptors cached");
        assert!(
            opened > FILES_MAX as u64,
            "sealed files were reopened ({opened})"
        );
        let held = open_descriptors() - before;
        assert!(
            held <= LOGS + FILES_MAX + 16,
            "{held} descriptors for {LOGS} logs: one active segment each and the cache"
        );
        // A clean close, then a reopen without scans; then a crash (no close), which scans.
        for log in &logs {
            log.close().await.expect("close");
        }
        drop(logs);
        let mut logs = Vec::new();
        for (i, want) in expected.iter().enumerate() {
            let (log, report) = PartitionLog::open(root.join(format!("p-{i}")), config())
                .await
                .expect("reopen");
            assert!(!report.scanned, "log {i}: the marker spares the scan");
            assert_eq!(&read_all(&log).await, want, "log {i} after a clean reopen");
            logs.push(log);
        }
        // One more batch each, durable, and the process "dies": no close, no marker.
        for (i, log) in logs.iter().enumerate() {
            let bytes = batch(i as u64 * 100 + BATCHES, 1, 300, 2000);
            let appended = log.append_durable(&bytes, 3).await.expect("append");
            expected[i].extend(stamped(bytes, appended.base_offset, 3));
        }
        drop(logs);
        for (i, want) in expected.iter().enumerate() {
            let (log, report) = PartitionLog::open(root.join(format!("p-{i}")), config())
                .await
                .expect("reopen after a crash");
            assert!(report.scanned, "log {i}: no marker after a crash");
            assert_eq!(&read_all(&log).await, want, "log {i} after a crash");
            log.close().await.expect("close");
        }
    });
}

/// Files synced at the same moment share one round: a `syncfs` from
/// `SHARED_SYNC_FILES_MIN` files on, concurrent fdatasyncs below; a lone file gets its own
/// fdatasync; each caller returns once its round ran.
#[test]
fn concurrent_syncs_share_a_round() {
    let dir = test_dir("shared-sync");
    let root = dir.path().to_owned();
    run(move || async move {
        let mut files = Vec::new();
        for i in 0..16 {
            let path = root.join(format!("f-{i}"));
            let file = glommio::io::DmaFile::create(&path).await.expect("create");
            let mut buf = file.alloc_dma_buffer(4096);
            buf.as_bytes_mut().fill(i as u8);
            file.write_at(buf, 0).await.expect("write");
            files.push((std::rc::Rc::new(file), path));
        }
        let before = sync::shard_sync_stats();
        // All sixteen ask at once: the first starts a round (its task may run it at once, for
        // that one file alone); the others gather into the next, one syncfs.
        let tasks: Vec<_> = files
            .iter()
            .map(|(file, path)| {
                let (file, path) = (std::rc::Rc::clone(file), path.clone());
                glommio::spawn_local(async move {
                    let device = sync::device_of(&file, &path)?;
                    sync::sync(&file, &path, device, false).await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("sync");
        }
        let after = sync::shard_sync_stats();
        assert_eq!(after.files - before.files, 16);
        assert_eq!(after.syncfs_rounds - before.syncfs_rounds, 1, "{after:?}");
        assert!(
            after.fdatasync_rounds - before.fdatasync_rounds <= 1,
            "{after:?}"
        );
        // One alone: its own fdatasync.
        let device = sync::device_of(&files[0].0, &files[0].1).expect("device");
        sync::sync(&files[0].0, &files[0].1, device, false)
            .await
            .expect("sync");
        let alone = sync::shard_sync_stats();
        assert_eq!(alone.fdatasync_rounds - after.fdatasync_rounds, 1);
        assert_eq!(alone.syncfs_rounds, after.syncfs_rounds);
        for (file, _) in files {
            file.close_rc().await.expect("close");
        }
    });
}
