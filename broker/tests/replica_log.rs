//! The partition log's replication support, on real files with O_DIRECT: a follower's append of
//! a leader's batches, the high watermark apart from the durable end, the leader-epoch history
//! and its checkpoint, and the divergence cases of KIP-101 and KIP-279 played at the log level
//! (a follower asks the leader where its last epoch ends and truncates there).

mod common;

use std::path::{Path, PathBuf};

use common::{batch, run, test_dir};
use sluice_broker::storage::{
    EpochEnd, FlushPolicy, LogConfig, PartitionLog, ReadBound, StorageError,
};
use sluice_protocol::{BatchError, BatchIter};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 32 << 10,
        index_interval_bytes: 4096,
        batch_bytes_max: 16 << 10,
        write_buffer_bytes: 64 << 10,
        cache_bytes_max: 256 << 10,
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    }
}

/// Every byte of the log up to `bound`, read in pieces (cache, active segment and sealed
/// segments alike).
async fn read_all(log: &PartitionLog, bound: ReadBound) -> Vec<u8> {
    let mut offset = log.log_start();
    let mut out = Vec::new();
    loop {
        let read = log.read_to(offset, 2500, bound).await.expect("read");
        if read.is_empty() {
            return out;
        }
        let bytes = read.to_vec();
        for item in BatchIter::new(&bytes) {
            offset = item.expect("batch").0.next_offset();
        }
        out.extend_from_slice(&bytes);
    }
}

/// The same through `read_for_send_to`: sealed segments come back as file spans, read here.
async fn send_all(log: &PartitionLog, bound: ReadBound) -> Vec<u8> {
    let mut offset = log.log_start();
    let mut out = Vec::new();
    loop {
        let read = log
            .read_for_send_to(offset, 2500, bound)
            .await
            .expect("read");
        if read.chunks.is_empty() {
            return out;
        }
        let mut bytes = Vec::new();
        for chunk in &read.chunks {
            match chunk {
                sluice_broker::storage::SendChunk::Memory(m) => {
                    bytes.extend_from_slice(m.as_bytes())
                }
                sluice_broker::storage::SendChunk::File(range) => {
                    let data = range
                        .file
                        .read_at(range.position, range.len)
                        .await
                        .expect("file span");
                    bytes.extend_from_slice(&data);
                }
            }
        }
        for item in BatchIter::new(&bytes) {
            offset = item.expect("batch").0.next_offset();
        }
        out.extend_from_slice(&bytes);
    }
}

/// Copies the leader's batches from `from` (up to its durable end) to the follower.
async fn replicate(leader: &PartitionLog, follower: &PartitionLog) {
    let mut offset = follower.next_offset();
    while offset < leader.durable_end() {
        let read = leader
            .read_to(offset, 8000, ReadBound::DurableEnd)
            .await
            .expect("leader read");
        let bytes = read.to_vec();
        for item in BatchIter::new(&bytes) {
            let (header, batch) = item.expect("batch");
            if header.base_offset < offset {
                continue;
            }
            follower
                .append_replica(batch)
                .await
                .expect("replica append");
            offset = header.next_offset();
        }
    }
    follower.flush().await.expect("flush");
}

async fn open(path: &Path) -> PartitionLog {
    PartitionLog::open(path, config()).await.expect("open").0
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("leader-0"), dir.join("follower-0"))
}

#[test]
fn a_follower_copies_the_leader_byte_for_byte_with_its_epochs() {
    let dir = test_dir("replica-copy");
    let (a, b) = paths(dir.path());
    run(move || async move {
        let leader = open(&a).await;
        let follower = open(&b).await;
        for (i, epoch) in [(0u64, 1u32), (1, 1), (2, 3), (3, 3), (4, 3), (5, 7)]
            .into_iter()
            .cycle()
            .take(60)
            .enumerate()
            .map(|(n, (i, e))| (i + 6 * n as u64, e + 10 * (n as u32 / 6)))
        {
            leader
                .append_durable(&batch(i, 1 + (i % 3) as u32, 600, 1000), epoch)
                .await
                .expect("append");
        }
        assert!(leader.segment_count() > 2, "sealed segments too");
        replicate(&leader, &follower).await;
        assert_eq!(follower.next_offset(), leader.next_offset());
        let leader_bytes = read_all(&leader, ReadBound::DurableEnd).await;
        assert_eq!(
            read_all(&follower, ReadBound::DurableEnd).await,
            leader_bytes
        );
        assert_eq!(follower.epoch_history(), leader.epoch_history());
        assert_eq!(
            leader.epoch_history().entries().len(),
            30,
            "three epochs per ten"
        );

        // After a restart both still agree, from their checkpoints and scans.
        leader.close().await.unwrap();
        follower.close().await.unwrap();
        let (leader, follower) = (open(&a).await, open(&b).await);
        assert_eq!(follower.epoch_history(), leader.epoch_history());
        assert_eq!(
            read_all(&follower, ReadBound::DurableEnd).await,
            leader_bytes
        );
        leader.close().await.unwrap();
        follower.close().await.unwrap();
    });
}

#[test]
fn replica_appends_refuse_gaps_old_epochs_and_damage_and_change_nothing() {
    let dir = test_dir("replica-refuse");
    let (a, b) = paths(dir.path());
    run(move || async move {
        let leader = open(&a).await;
        let follower = open(&b).await;
        for i in 0..4u64 {
            leader
                .append_durable(&batch(i, 2, 100, 1000), 5)
                .await
                .unwrap();
        }
        let bytes = read_all(&leader, ReadBound::DurableEnd).await;
        let batches: Vec<Vec<u8>> = BatchIter::new(&bytes)
            .map(|b| b.unwrap().1.to_vec())
            .collect();
        follower.append_replica(&batches[0]).await.unwrap();
        let before = (follower.next_offset(), follower.size_bytes());
        // A gap: batch 2 where batch 1 is next.
        assert!(matches!(
            follower.append_replica(&batches[2]).await,
            Err(StorageError::NotContiguous {
                expected: 2,
                found: 4
            })
        ));
        // A flipped byte.
        let mut damaged = batches[1].clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(matches!(
            follower.append_replica(&damaged).await,
            Err(StorageError::InvalidBatch(BatchError::CrcMismatch { .. }))
        ));
        // Two batches in one call, or a torn one.
        let two = [batches[1].clone(), batches[2].clone()].concat();
        assert!(follower.append_replica(&two).await.is_err());
        assert!(follower.append_replica(&batches[1][..30]).await.is_err());
        assert_eq!((follower.next_offset(), follower.size_bytes()), before);

        // An older epoch than the log holds (a deposed leader's batch).
        let mut old = batches[1].clone();
        sluice_protocol::batch::stamp(&mut old, 2, 4);
        assert!(matches!(
            follower.append_replica(&old).await,
            Err(StorageError::EpochRegression(_))
        ));
        // The same holds for a leader append with a stale epoch.
        assert!(matches!(
            follower.append(&batch(9, 1, 10, 1), 3).await,
            Err(StorageError::EpochRegression(_))
        ));
        assert_eq!((follower.next_offset(), follower.size_bytes()), before);
        follower.append_replica(&batches[1]).await.unwrap();
        assert_eq!(follower.next_offset(), 4);
        leader.close().await.unwrap();
        follower.close().await.unwrap();
    });
}

#[test]
fn consumers_read_below_the_high_watermark_and_replicas_below_the_durable_end() {
    let dir = test_dir("replica-hw");
    let path = dir.path().join("t-0");
    run(move || async move {
        let log = open(&path).await;
        let mut ends = vec![0u64];
        for i in 0..40u64 {
            let appended = log
                .append_durable(&batch(i, 2, 900, 1000), 1)
                .await
                .unwrap();
            ends.push(appended.last_offset + 1);
        }
        assert!(log.segment_count() > 2);
        let everything = read_all(&log, ReadBound::DurableEnd).await;
        // Unreplicated: the high watermark is the durable end.
        assert_eq!(log.high_watermark(), log.durable_end());
        // Replicated: consumers stop at the high watermark, wherever it falls: in a sealed
        // segment, in the active one, at the start.
        for hw in [ends[3], ends[21], ends[39], 0] {
            let dir = test_dir("replica-hw-each");
            let copy = dir.path().join("t-0");
            let replica = open(&copy).await;
            for item in BatchIter::new(&everything) {
                replica.append_replica(item.unwrap().1).await.unwrap();
            }
            replica.flush().await.unwrap();
            replica.set_high_watermark(hw);
            assert_eq!(replica.high_watermark(), hw);
            let below: usize = BatchIter::new(&everything)
                .map(|b| b.unwrap())
                .take_while(|(h, _)| h.next_offset() <= hw)
                .map(|(_, b)| b.len())
                .sum();
            assert_eq!(
                read_all(&replica, ReadBound::HighWatermark).await,
                everything[..below]
            );
            assert_eq!(
                send_all(&replica, ReadBound::HighWatermark).await,
                everything[..below]
            );
            assert_eq!(read_all(&replica, ReadBound::DurableEnd).await, everything);
            assert_eq!(send_all(&replica, ReadBound::DurableEnd).await, everything);
            assert!(matches!(
                replica.read(hw + 1, 100).await,
                Err(StorageError::OffsetOutOfRange { .. })
            ));
            // It never moves back.
            replica.set_high_watermark(hw.saturating_sub(1));
            assert_eq!(replica.high_watermark(), hw);
            // Its checkpoint survives a restart.
            replica.checkpoint_high_watermark().await.unwrap();
            replica.close().await.unwrap();
            let replica = open(&copy).await;
            assert_eq!(replica.high_watermark(), hw);
            // Never past the durable end.
            replica.set_high_watermark(u64::MAX);
            assert_eq!(replica.high_watermark(), replica.durable_end());
            // Truncation below it lowers it.
            replica.truncate_to(ends[1]).await.unwrap();
            assert_eq!(replica.high_watermark(), ends[1]);
            replica.close().await.unwrap();
        }
        log.close().await.unwrap();
    });
}

#[test]
fn the_epoch_history_survives_truncation_retention_and_a_lost_checkpoint() {
    let dir = test_dir("replica-epochs");
    let path = dir.path().join("t-0");
    run(move || async move {
        let log = open(&path).await;
        let mut starts = Vec::new();
        for (epoch, batches) in [(2u32, 5u64), (4, 6), (9, 7)] {
            starts.push((epoch, log.next_offset()));
            for i in 0..batches {
                log.append_durable(&batch(i, 3, 400, 1000), epoch)
                    .await
                    .unwrap();
            }
        }
        let end = log.next_offset();
        let found = |epoch, end_offset| EpochEnd::Found { epoch, end_offset };
        assert_eq!(log.end_of_epoch(2), found(2, starts[1].1));
        assert_eq!(log.end_of_epoch(3), found(2, starts[1].1));
        assert_eq!(log.end_of_epoch(4), found(4, starts[2].1));
        assert_eq!(log.end_of_epoch(9), found(9, end));
        assert_eq!(log.end_of_epoch(10), EpochEnd::Unknown);
        log.close().await.unwrap();

        // The checkpoint is lost (or lags): the active segment's scan restores its epochs.
        std::fs::remove_file(path.join("leader-epoch-checkpoint")).unwrap();
        let log = open(&path).await;
        let history = log.epoch_history();
        let last = history.latest().expect("an epoch");
        assert_eq!(last.epoch, 9);
        assert_eq!(log.end_of_epoch(9), found(9, end));
        // A new epoch is checkpointed before its data is reported durable.
        log.append_durable(&batch(1, 1, 10, 1), 11).await.unwrap();
        let on_disk = sluice_broker::storage::EpochHistory::decode(
            &std::fs::read(path.join("leader-epoch-checkpoint")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            on_disk.latest().map(|e| (e.epoch, e.start_offset)),
            Some((11, end))
        );

        // Truncation forgets the epochs it cut (a cut inside a batch takes the whole batch).
        log.truncate_to(starts[2].1 + 3).await.unwrap();
        assert_eq!(log.epoch_history().latest().map(|e| e.epoch), Some(9));
        log.truncate_to(starts[2].1).await.unwrap();
        assert_eq!(log.epoch_history().latest().map(|e| e.epoch), Some(4));
        log.close().await.unwrap();
        let log = open(&path).await;
        assert_eq!(log.epoch_history().latest().map(|e| e.epoch), Some(4));
        assert_eq!(log.end_of_epoch(4), found(4, starts[2].1));
        log.close().await.unwrap();
    });
}

/// Where a follower must cut its log after a leader change (Kafka's rule, KIP-101 and KIP-279):
/// it asks the leader where the follower's latest epoch ends. If the leader had that epoch, the
/// follower cuts at that end; if not, the leader answered with the largest epoch below it, and
/// the follower cuts at the smaller of the leader's and its own end of that epoch.
async fn reconcile(follower: &PartitionLog, leader: &PartitionLog) {
    let Some(latest) = follower.epoch_history().latest() else {
        return;
    };
    let EpochEnd::Found { epoch, end_offset } = leader.end_of_epoch(latest.epoch) else {
        panic!("the leader knows no epoch at or below {}", latest.epoch);
    };
    let mut cut = end_offset.min(follower.next_offset());
    if epoch != latest.epoch {
        if let EpochEnd::Found {
            end_offset: own, ..
        } = follower.end_of_epoch(epoch)
        {
            cut = cut.min(own);
        }
    }
    follower.truncate_to(cut).await.unwrap();
}

/// KIP-101, scenario 1: a follower with more data than the high watermark says must not cut
/// to the high watermark (losing acknowledged data if the new leader then dies) nor keep a tail
/// the new leader overwrote: it keeps exactly what the leader has.
#[test]
fn kip_101_follower_keeps_what_the_new_leader_has_and_drops_what_it_overwrote() {
    let dir = test_dir("kip101");
    let (a, b) = paths(dir.path());
    run(move || async move {
        let old_leader = open(&a).await;
        let new_leader = open(&b).await;
        // Epoch 1: both have m0 and m1; the old leader also wrote m2 (never replicated).
        for i in 0..2u64 {
            old_leader
                .append_durable(&batch(i, 1, 50, 1000), 1)
                .await
                .unwrap();
        }
        replicate(&old_leader, &new_leader).await;
        old_leader
            .append_durable(&batch(2, 1, 50, 1000), 1)
            .await
            .unwrap();
        // The old leader fails; the new one, epoch 2, writes m3 at offset 2.
        new_leader
            .append_durable(&batch(3, 1, 50, 1000), 2)
            .await
            .unwrap();
        // The old leader returns as a follower.
        reconcile(&old_leader, &new_leader).await;
        assert_eq!(old_leader.next_offset(), 2, "m2 cut, m0 and m1 kept");
        replicate(&new_leader, &old_leader).await;
        assert_eq!(
            read_all(&old_leader, ReadBound::DurableEnd).await,
            read_all(&new_leader, ReadBound::DurableEnd).await,
            "replicas agree byte for byte"
        );
        assert_eq!(old_leader.epoch_history(), new_leader.epoch_history());
        old_leader.close().await.unwrap();
        new_leader.close().await.unwrap();
    });
}

/// KIP-279: the follower's latest epoch is one the leader never had (both led in turn while the
/// other was away). The leader answers with the largest epoch below it and where that one ends;
/// the follower cuts there and asks again until the answer is for its own latest epoch.
#[test]
fn kip_279_divergence_across_epochs_the_leader_never_had() {
    let dir = test_dir("kip279");
    let (a, b) = paths(dir.path());
    run(move || async move {
        let a_log = open(&a).await; // will lead at the end
        let b_log = open(&b).await; // will follow at the end
        for i in 0..3u64 {
            a_log
                .append_durable(&batch(i, 1, 50, 1000), 1)
                .await
                .unwrap();
        }
        replicate(&a_log, &b_log).await;
        // B leads epoch 2 alone and writes two batches A never gets.
        for i in 3..5u64 {
            b_log
                .append_durable(&batch(i, 2, 50, 1000), 2)
                .await
                .unwrap();
        }
        // A leads epoch 3 without them and writes its own.
        for i in 5..9u64 {
            a_log
                .append_durable(&batch(i, 1, 60, 1000), 3)
                .await
                .unwrap();
        }
        assert_eq!(
            a_log.end_of_epoch(2),
            EpochEnd::Found {
                epoch: 1,
                end_offset: 3
            }
        );
        reconcile(&b_log, &a_log).await;
        assert_eq!(b_log.next_offset(), 3, "B's epoch-2 batches are gone");
        replicate(&a_log, &b_log).await;
        assert_eq!(
            read_all(&b_log, ReadBound::DurableEnd).await,
            read_all(&a_log, ReadBound::DurableEnd).await
        );
        assert_eq!(b_log.epoch_history(), a_log.epoch_history());
        a_log.close().await.unwrap();
        b_log.close().await.unwrap();
    });
}

#[test]
fn retention_moves_the_first_epoch_start_to_the_log_start() {
    let dir = test_dir("replica-retention");
    let path = dir.path().join("t-0");
    run(move || async move {
        let config = LogConfig {
            retention_bytes: Some(40 << 10),
            ..config()
        };
        let log = PartitionLog::open(&path, config.clone()).await.unwrap().0;
        for i in 0..60u64 {
            log.append_durable(&batch(i, 2, 900, 1000), 1 + (i / 20) as u32)
                .await
                .unwrap();
        }
        let report = log.enforce_retention(0).await.unwrap();
        assert!(report.segments_deleted > 0);
        let first = log.epoch_history().entries()[0];
        assert_eq!(first.start_offset, log.log_start());
        assert!(first.epoch >= 1);
        assert_eq!(log.epoch_history().latest().map(|e| e.epoch), Some(3));
        log.close().await.unwrap();
        let log = PartitionLog::open(&path, config).await.unwrap().0;
        assert_eq!(log.epoch_history().entries()[0], first);
        log.close().await.unwrap();
    });
}

/// The high watermark is checkpointed when it moved (and only then), and on close; a follower
/// that fell behind the leader's log start restarts its log there, empty, and continues from
/// it: the old segments and epochs are gone, the next batch is the leader's at that offset,
/// and all of it survives a reopen.
#[test]
fn high_watermark_checkpoints_and_a_restart_at_the_leaders_log_start() {
    let dir = test_dir("replica-restart");
    let (a, b) = paths(dir.path());
    run(move || async move {
        let leader = open(&a).await;
        for i in 0..30u64 {
            leader
                .append_durable(&batch(i, 2, 900, 1000), 2)
                .await
                .unwrap();
        }
        let follower = open(&b).await;
        // Unreplicated: nothing to checkpoint.
        assert!(!follower.checkpoint_high_watermark_if_moved().await.unwrap());
        replicate(&leader, &follower).await;
        follower.set_high_watermark(leader.durable_end() / 2);
        assert!(follower.checkpoint_high_watermark_if_moved().await.unwrap());
        assert!(
            !follower.checkpoint_high_watermark_if_moved().await.unwrap(),
            "unchanged: not written again"
        );
        let hw = follower.durable_end();
        follower.set_high_watermark(hw);
        // Closing writes the moved high watermark.
        follower.close().await.unwrap();
        let follower = open(&b).await;
        assert_eq!(follower.high_watermark(), hw);

        // The leader goes on and retention drops its start: the follower is behind it.
        for i in 30..60u64 {
            leader
                .append_durable(&batch(i, 2, 900, 1000), 3)
                .await
                .unwrap();
        }
        let start = leader.segment_bases()[leader.segment_count() - 2];
        assert!(start > follower.next_offset());
        assert!(matches!(
            follower.restart_at(follower.next_offset()).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        follower.restart_at(start).await.unwrap();
        assert_eq!(
            (follower.log_start(), follower.next_offset()),
            (start, start)
        );
        assert_eq!(follower.high_watermark(), start);
        assert!(follower.epoch_history().entries().is_empty());
        // It continues from there as any follower, and holds exactly the leader's suffix.
        let mut offset = start;
        while offset < leader.durable_end() {
            let bytes = leader
                .read_to(offset, 8000, ReadBound::DurableEnd)
                .await
                .unwrap()
                .to_vec();
            for item in BatchIter::new(&bytes) {
                let (header, batch) = item.unwrap();
                if header.base_offset >= offset {
                    follower.append_replica(batch).await.unwrap();
                    offset = header.next_offset();
                }
            }
        }
        follower.flush().await.unwrap();
        let suffix = {
            let mut out = Vec::new();
            let mut at = start;
            loop {
                let read = leader
                    .read_to(at, 2500, ReadBound::DurableEnd)
                    .await
                    .unwrap();
                if read.is_empty() {
                    break out;
                }
                let bytes = read.to_vec();
                for item in BatchIter::new(&bytes) {
                    at = item.unwrap().0.next_offset();
                }
                out.extend_from_slice(&bytes);
            }
        };
        assert_eq!(read_all(&follower, ReadBound::DurableEnd).await, suffix);
        follower.close().await.unwrap();
        let follower = open(&b).await;
        assert_eq!(follower.log_start(), start);
        assert_eq!(read_all(&follower, ReadBound::DurableEnd).await, suffix);
        assert_eq!(follower.epoch_history().latest().map(|e| e.epoch), Some(3));
        follower.close().await.unwrap();
        leader.close().await.unwrap();
    });
}

/// An idempotent producer's batch: `records` records from `base_sequence`.
fn idempotent(base_sequence: i32, records: u32) -> Vec<u8> {
    idempotent_of(
        base_sequence,
        (0..records).map(|i| format!("{base_sequence}-{i}").into_bytes()),
    )
}

/// An idempotent producer's batch of the given record values, from `base_sequence`.
fn idempotent_of(base_sequence: i32, values: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut builder = sluice_protocol::BatchBuilder::new(sluice_protocol::BatchOptions {
        producer_id: 7,
        producer_epoch: 0,
        base_sequence,
    });
    for value in values {
        builder.push(1_000, None, Some(&value), &[]);
    }
    builder.finish()
}

/// A follower records its producers' sequences as it appends the leader's batches, so when it
/// becomes leader a retry of a replicated batch is a duplicate (not written twice); it appends
/// nothing once it no longer follows; a truncation rebuilds the sequences from what is left.
#[test]
fn a_followers_producer_state_carries_over_to_its_leadership() {
    use sluice_broker::server::producers::{PartitionProducers, ProduceOutcome, ProducerState};
    let dir = test_dir("replica-producers");
    let root = dir.path().to_path_buf();
    run(move || async move {
        let (leader, _) = PartitionLog::open(root.join("leader"), config())
            .await
            .unwrap();
        let (follower, _) = PartitionLog::open(root.join("follower"), config())
            .await
            .unwrap();
        let at_leader = PartitionProducers::new(ProducerState::new(true));
        for (sequence, records) in [(0, 3), (3, 2)] {
            let outcome = at_leader
                .append(&leader, &idempotent(sequence, records), 1)
                .await
                .unwrap();
            let ProduceOutcome::Appended(appended) = outcome else {
                panic!("{outcome:?}")
            };
            leader.wait_durable(appended).await.unwrap();
        }
        let stored = read_all(&leader, ReadBound::DurableEnd).await;

        let at_follower = PartitionProducers::new(ProducerState::rebuild(&follower).await.unwrap());
        for item in BatchIter::new(&stored) {
            let (_, bytes) = item.unwrap();
            let appended = at_follower
                .append_replica(&follower, bytes, || true)
                .await
                .unwrap()
                .expect("still following");
            follower.wait_durable(appended).await.unwrap();
        }
        // No longer following: nothing is appended.
        let refused = at_follower
            .append_replica(&follower, &idempotent(5, 1), || false)
            .await
            .unwrap();
        assert!(refused.is_none());
        assert_eq!(follower.next_offset(), 5);

        // Leading now: a retry of the replicated batch is answered with its offset.
        let retry = at_follower
            .append(&follower, &idempotent(3, 2), 2)
            .await
            .unwrap();
        assert_eq!(retry, ProduceOutcome::Duplicate { base_offset: 3 });
        let gap = at_follower
            .append(&follower, &idempotent(9, 1), 2)
            .await
            .unwrap();
        assert_eq!(gap, ProduceOutcome::OutOfOrder);

        // A truncation to offset 3 forgets the batch from sequence 3: it is new again.
        at_follower.truncate(&follower, 3, || true).await.unwrap();
        let again = at_follower
            .append(&follower, &idempotent(3, 2), 2)
            .await
            .unwrap();
        assert!(
            matches!(again, ProduceOutcome::Appended(a) if a.base_offset == 3),
            "{again:?}"
        );
        // A truncation asked of a replica that leads now does nothing.
        at_follower.truncate(&follower, 0, || false).await.unwrap();
        assert_eq!(follower.next_offset(), 5);
        leader.close().await.unwrap();
        follower.close().await.unwrap();
    });
}

/// An idempotent producer's batch of one record with a value of `value_len` bytes.
fn idempotent_padded(base_sequence: i32, value_len: usize) -> Vec<u8> {
    let mut value = format!("{base_sequence}-").into_bytes();
    value.resize(value_len, b'p');
    idempotent_of(base_sequence, std::iter::once(value))
}

/// After a restart, a retry of any of a producer's last `PRODUCER_BATCHES_REMEMBERED` batches
/// is answered as a duplicate, even when large batches in small segments put them further back
/// than the newest two segments (the rebuild used to read only those: a producer that retried
/// its oldest unacknowledged batch after a broker restart was refused `OutOfOrderSequence`).
#[test]
fn a_rebuilt_producer_state_reaches_back_as_far_as_a_retry_may() {
    use sluice_broker::server::producers::{PartitionProducers, ProduceOutcome, ProducerState};
    let dir = test_dir("rebuild-reach");
    let path = dir.path().join("log");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, config()).await.unwrap();
        let producers = PartitionProducers::new(ProducerState::new(true));
        let mut offsets = Vec::new();
        for n in 0..20 {
            let outcome = producers
                .append(&log, &idempotent_padded(n, 12_000), 1)
                .await
                .unwrap();
            let ProduceOutcome::Appended(appended) = outcome else {
                panic!("{outcome:?}")
            };
            log.wait_durable(appended).await.unwrap();
            offsets.push(appended.base_offset);
        }
        assert!(log.segment_count() >= 8, "two batches a segment");
        log.close().await.unwrap();

        let (log, _) = PartitionLog::open(&path, config()).await.unwrap();
        let producers = PartitionProducers::new(ProducerState::rebuild(&log).await.unwrap());
        for n in 4..20 {
            let retry = producers
                .append(&log, &idempotent_padded(n, 12_000), 1)
                .await
                .unwrap();
            assert_eq!(
                retry,
                ProduceOutcome::Duplicate {
                    base_offset: offsets[n as usize]
                },
                "a retry of batch {n} after the restart"
            );
        }
        let next = producers
            .append(&log, &idempotent_padded(20, 12_000), 1)
            .await
            .unwrap();
        assert!(
            matches!(next, ProduceOutcome::Appended(a) if a.base_offset == 20),
            "{next:?}"
        );
        log.close().await.unwrap();
    });
}
