//! Idempotent producers: per-partition sequence tracking that turns retries into no-ops.
//!
//! A producer with an id (handed out by the controller in blocks) numbers its batches per
//! partition. The partition remembers, per producer, its epoch, the last sequence number it
//! accepted and its last few batches. A batch is accepted when it continues the sequence; a
//! retry of a remembered batch is answered with the offset it got the first time and not written
//! again; a gap is refused (`OutOfOrderSequence`), and so is an older epoch (`ProducerFenced`).
//! The state is rebuilt from the log when a partition is opened, and kept by followers too: a
//! replica appends the leader's batches through [`PartitionProducers::append_replica`] and
//! rebuilds after a truncation, so a follower that becomes leader already knows every sequence
//! it holds (a rebuild at that moment could miss a replica append still landing, and a retry of
//! that batch would then be written twice).
//!
//! Check, append and record are one step per partition ([`PartitionProducers::append`]): the
//! append can wait (backpressure, a segment roll), and a retry of the same batch arriving on
//! another connection in that wait would otherwise pass the check too and be written twice; a
//! record made out of sequence order would also make the newest remembered batch an older one,
//! so the next batch in sequence would be refused as out of order.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use glommio::sync::Semaphore;
use sluice_protocol::BatchHeader;

use crate::limits::{
    PRODUCERS_PER_PARTITION_MAX, PRODUCER_BATCHES_REMEMBERED, PRODUCER_REBUILD_EXTEND_BYTES_MAX,
};
use crate::storage::{Appended, PartitionLog, StorageError};

/// One remembered batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SeenBatch {
    base_sequence: i32,
    last_sequence: i32,
    base_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    recent: VecDeque<SeenBatch>,
    /// Monotonic activity stamp, to forget the least recently active producer first.
    touched: u64,
}

/// What to do with a producer's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not from an idempotent producer, or the next in sequence: append it.
    Append,
    /// A retry of a batch already in the log at this offset: answer with it, append nothing.
    Duplicate {
        base_offset: u64,
    },
    OutOfOrder,
    Fenced,
}

/// The last sequence number of a batch (sequences wrap at `i32::MAX`).
fn last_sequence(header: &BatchHeader) -> i32 {
    let span = i64::from(header.last_offset_delta);
    ((i64::from(header.base_sequence) + span) % (i64::from(i32::MAX) + 1)) as i32
}

fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

/// The producers of one partition.
#[derive(Debug, Default)]
pub struct ProducerState {
    producers: HashMap<i64, ProducerEntry>,
    clock: u64,
    /// Every producer that ever wrote to the partition is known: the state was built from the
    /// whole log and none was forgotten since. Then a producer not known here has written
    /// nothing, and its first batch must start its sequence (0).
    knows_every_producer: bool,
}

impl ProducerState {
    /// The state of a partition whose whole log was scanned (`complete`), or only its newest
    /// part (a producer silent since may be unknown here).
    pub fn new(complete: bool) -> ProducerState {
        ProducerState {
            knows_every_producer: complete,
            ..ProducerState::default()
        }
    }

    /// Rebuilds the state from the newest segments of a log: the newest two, and older ones
    /// while a producer seen has fewer than `PRODUCER_BATCHES_REMEMBERED` batches recorded
    /// (a retry may reach back that far: with large batches in small segments, two segments
    /// hold fewer), up to `PRODUCER_REBUILD_EXTEND_BYTES_MAX` read. A producer silent for longer
    /// is treated as new: its next batch is accepted whatever its sequence. A log read from
    /// offset 0 gives a state that knows every producer. The whole log counts, not only what is
    /// below the high watermark: a replica that becomes leader keeps its tail past the old high
    /// watermark, and its producers' sequences continue from there.
    pub async fn rebuild(log: &PartitionLog) -> Result<ProducerState, StorageError> {
        let bases = log.segment_bases();
        let log_start = log.log_start();
        let mut first = bases.len().saturating_sub(2);
        let base = |i: usize| bases.get(i).copied().unwrap_or(0).max(log_start);
        let mut start = base(first);
        let mut state = ProducerState::new(true);
        let mut bytes = 0u64;
        log.for_each_durable_batch(start, |header, batch| {
            bytes += batch.len() as u64;
            state.record(header, header.base_offset);
        })
        .await?;
        while first > 0
            && start > log_start
            && bytes < PRODUCER_REBUILD_EXTEND_BYTES_MAX
            && state.some_history_short()
        {
            first -= 1;
            let older_start = base(first);
            let mut older = ProducerState::new(true);
            log.for_each_durable_batch_until(older_start, start, |header, batch| {
                bytes += batch.len() as u64;
                older.record(header, header.base_offset);
            })
            .await?;
            state.put_behind(older);
            start = older_start;
        }
        state.knows_every_producer &= start == 0;
        Ok(state)
    }

    /// Whether a producer known here has fewer batches recorded than a retry may reach back.
    fn some_history_short(&self) -> bool {
        self.producers
            .values()
            .any(|e| e.recent.len() < PRODUCER_BATCHES_REMEMBERED)
    }

    /// Puts `older`, the state of the part of the log just before the part this state was
    /// built from, behind it: each producer's older batches before its newer ones (those of an
    /// older epoch do not count once a newer one began), producers seen only there added.
    fn put_behind(&mut self, older: ProducerState) {
        self.knows_every_producer &= older.knows_every_producer;
        for (id, old) in older.producers {
            match self.producers.get_mut(&id) {
                Some(entry) if entry.epoch == old.epoch => {
                    let room = PRODUCER_BATCHES_REMEMBERED.saturating_sub(entry.recent.len());
                    for batch in old.recent.into_iter().rev().take(room) {
                        entry.recent.push_front(batch);
                    }
                }
                Some(_) => {}
                None => {
                    // Older than everything recorded here: first to go under the bound.
                    self.producers
                        .insert(id, ProducerEntry { touched: 0, ..old });
                }
            }
        }
        self.forget_beyond_bound();
    }

    /// Forgets the least recently active producers beyond `PRODUCERS_PER_PARTITION_MAX`; the
    /// state then no longer knows every producer.
    fn forget_beyond_bound(&mut self) {
        while self.producers.len() > PRODUCERS_PER_PARTITION_MAX {
            let Some((&oldest, _)) = self.producers.iter().min_by_key(|(_, e)| e.touched) else {
                break;
            };
            self.producers.remove(&oldest);
            self.knows_every_producer = false;
        }
    }

    /// Decides what to do with a batch before it is appended.
    pub fn check(&self, header: &BatchHeader) -> SequenceCheck {
        if header.producer_id < 0 {
            return SequenceCheck::Append;
        }
        let Some(entry) = self.producers.get(&header.producer_id) else {
            // A new producer starts at 0: a later batch means an earlier one is still on its
            // way (a retry after a refusal), and writing this one first would reorder them.
            // A producer that may have been forgotten has nothing to compare with.
            return if header.base_sequence == 0 || !self.knows_every_producer {
                SequenceCheck::Append
            } else {
                SequenceCheck::OutOfOrder
            };
        };
        if header.producer_epoch < entry.epoch {
            return SequenceCheck::Fenced;
        }
        if header.producer_epoch > entry.epoch {
            return if header.base_sequence == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::OutOfOrder
            };
        }
        let last = last_sequence(header);
        if let Some(seen) = entry
            .recent
            .iter()
            .find(|b| b.base_sequence == header.base_sequence && b.last_sequence == last)
        {
            return SequenceCheck::Duplicate {
                base_offset: seen.base_offset,
            };
        }
        match entry.recent.back() {
            Some(newest) if next_sequence(newest.last_sequence) == header.base_sequence => {
                SequenceCheck::Append
            }
            None => SequenceCheck::Append,
            Some(_) => SequenceCheck::OutOfOrder,
        }
    }

    /// Records a batch that is now in the log at `base_offset`.
    pub fn record(&mut self, header: &BatchHeader, base_offset: u64) {
        if header.producer_id < 0 {
            return;
        }
        self.clock += 1;
        let clock = self.clock;
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                recent: VecDeque::new(),
                touched: clock,
            });
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.recent.clear();
        }
        entry.touched = clock;
        entry.recent.push_back(SeenBatch {
            base_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset,
        });
        while entry.recent.len() > PRODUCER_BATCHES_REMEMBERED {
            entry.recent.pop_front();
        }
        self.forget_beyond_bound();
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

/// What became of a batch offered to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceOutcome {
    /// Appended now (not yet durable: wait with `PartitionLog::wait_durable`).
    Appended(Appended),
    /// A retry of a batch already in the log: nothing was appended.
    Duplicate { base_offset: u64 },
    /// Refused: a gap in the producer's sequence.
    OutOfOrder,
    /// Refused: an older epoch of the producer.
    Fenced,
}

/// How a follower's log is cut back before its producers are rebuilt.
enum Reset {
    TruncateTo(u64),
    RestartAt(u64),
}

/// A partition's idempotent producers and the lock that makes check, append and record of a
/// producer's batch one step. Owned by the partition's shard (single-threaded, never shared
/// across executors).
#[derive(Debug)]
pub struct PartitionProducers {
    state: RefCell<ProducerState>,
    /// One permit: held by an idempotent batch from its sequence check until its sequence is
    /// recorded (the append between them can wait). Batches without a producer id skip it.
    appending: Semaphore,
}

impl PartitionProducers {
    pub fn new(state: ProducerState) -> PartitionProducers {
        PartitionProducers {
            state: RefCell::new(state),
            appending: Semaphore::new(1),
        }
    }

    /// Checks the batch's sequence, appends it if it is new and records it, as one step for
    /// this partition. A batch whose header does not parse goes to `append`, which reports
    /// the precise error.
    pub async fn append(
        &self,
        log: &PartitionLog,
        batch: &[u8],
        leader_epoch: u32,
    ) -> Result<ProduceOutcome, StorageError> {
        let header = match BatchHeader::parse(batch) {
            Ok(header) if header.producer_id >= 0 => header,
            _ => {
                return log
                    .append(batch, leader_epoch)
                    .await
                    .map(ProduceOutcome::Appended)
            }
        };
        let _step = self.step().await?;
        match self.state.borrow().check(&header) {
            SequenceCheck::Append => {}
            SequenceCheck::Duplicate { base_offset } => {
                return Ok(ProduceOutcome::Duplicate { base_offset })
            }
            SequenceCheck::OutOfOrder => return Ok(ProduceOutcome::OutOfOrder),
            SequenceCheck::Fenced => return Ok(ProduceOutcome::Fenced),
        }
        let appended = log.append(batch, leader_epoch).await?;
        self.state
            .borrow_mut()
            .record(&header, appended.base_offset);
        Ok(ProduceOutcome::Appended(appended))
    }

    /// Appends a batch the leader stored (offsets and epochs as they are) and records its
    /// producer's sequence, if `still_following` holds once this partition's step is ours: a
    /// replica that became leader meanwhile appends nothing more from its old leader.
    pub async fn append_replica(
        &self,
        log: &PartitionLog,
        batch: &[u8],
        still_following: impl Fn() -> bool,
    ) -> Result<Option<Appended>, StorageError> {
        let _step = self.step().await?;
        if !still_following() {
            return Ok(None);
        }
        let appended = log.append_replica(batch).await?;
        if let Ok(header) = BatchHeader::parse(batch) {
            if header.producer_id >= 0 {
                self.state.borrow_mut().record(&header, header.base_offset);
            }
        }
        Ok(Some(appended))
    }

    /// Truncates the log to `offset` (a divergent tail) and rebuilds the producers from it, if
    /// `still_following` holds once this partition's step is ours.
    pub async fn truncate(
        &self,
        log: &PartitionLog,
        offset: u64,
        still_following: impl Fn() -> bool,
    ) -> Result<(), StorageError> {
        self.reset(log, Reset::TruncateTo(offset), still_following)
            .await
    }

    /// Empties the log and starts it again at `offset` (its producers are forgotten), if
    /// `still_following` holds once this partition's step is ours.
    pub async fn restart(
        &self,
        log: &PartitionLog,
        offset: u64,
        still_following: impl Fn() -> bool,
    ) -> Result<(), StorageError> {
        self.reset(log, Reset::RestartAt(offset), still_following)
            .await
    }

    async fn reset(
        &self,
        log: &PartitionLog,
        reset: Reset,
        still_following: impl Fn() -> bool,
    ) -> Result<(), StorageError> {
        let _step = self.step().await?;
        if !still_following() {
            return Ok(());
        }
        match reset {
            Reset::TruncateTo(offset) => {
                log.truncate_to(offset).await?;
            }
            Reset::RestartAt(offset) => log.restart_at(offset).await?,
        }
        *self.state.borrow_mut() = ProducerState::rebuild(log).await?;
        Ok(())
    }

    /// Waits until no append of this partition is between its check and its record; the
    /// partition's next step waits while the permit is held.
    pub async fn step(&self) -> Result<glommio::sync::Permit<'_>, StorageError> {
        self.appending
            .acquire_permit(1)
            .await
            .map_err(|_| StorageError::Closed)
    }

    /// Producers known to this partition.
    pub fn len(&self) -> usize {
        self.state.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.borrow().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::{BatchBuilder, BatchOptions};

    fn header(producer_id: i64, epoch: i16, base_sequence: i32, records: u32) -> BatchHeader {
        let mut builder = BatchBuilder::new(BatchOptions {
            producer_id,
            producer_epoch: epoch,
            base_sequence,
        });
        for _ in 0..records {
            builder.push(1, None, Some(b"v"), &[]);
        }
        BatchHeader::parse(&builder.finish()).unwrap()
    }

    #[test]
    fn sequences_accept_dedupe_and_refuse_gaps() {
        let mut state = ProducerState::default();
        let first = header(7, 0, 0, 3);
        assert_eq!(state.check(&first), SequenceCheck::Append);
        state.record(&first, 100);
        assert_eq!(
            state.check(&first),
            SequenceCheck::Duplicate { base_offset: 100 }
        );
        let second = header(7, 0, 3, 2);
        assert_eq!(state.check(&second), SequenceCheck::Append);
        state.record(&second, 103);
        assert_eq!(
            state.check(&header(7, 0, 3, 2)),
            SequenceCheck::Duplicate { base_offset: 103 }
        );
        assert_eq!(
            state.check(&header(7, 0, 9, 1)),
            SequenceCheck::OutOfOrder,
            "a gap"
        );
        assert_eq!(
            state.check(&header(7, 0, 4, 1)),
            SequenceCheck::OutOfOrder,
            "overlapping, not a known batch"
        );
        assert_eq!(state.check(&header(7, 0, 5, 1)), SequenceCheck::Append);
        assert_eq!(
            state.check(&header(-1, -1, -1, 1)),
            SequenceCheck::Append,
            "not idempotent"
        );
    }

    #[test]
    fn epochs_fence_and_reset() {
        let mut state = ProducerState::default();
        state.record(&header(1, 2, 0, 1), 0);
        assert_eq!(state.check(&header(1, 1, 1, 1)), SequenceCheck::Fenced);
        assert_eq!(state.check(&header(1, 3, 5, 1)), SequenceCheck::OutOfOrder);
        assert_eq!(state.check(&header(1, 3, 0, 1)), SequenceCheck::Append);
    }

    #[test]
    fn a_producer_unknown_to_a_complete_state_starts_at_zero() {
        let mut state = ProducerState::new(true);
        assert_eq!(
            state.check(&header(3, 0, 5, 1)),
            SequenceCheck::OutOfOrder,
            "its first batch is still on its way"
        );
        assert_eq!(state.check(&header(3, 0, 0, 5)), SequenceCheck::Append);
        state.record(&header(3, 0, 0, 5), 0);
        assert_eq!(state.check(&header(3, 0, 5, 1)), SequenceCheck::Append);
        // A state that may have forgotten producers takes them at any sequence.
        assert_eq!(
            ProducerState::new(false).check(&header(3, 0, 5, 1)),
            SequenceCheck::Append
        );
        let mut crowded = ProducerState::new(true);
        for id in 0..=PRODUCERS_PER_PARTITION_MAX as i64 {
            crowded.record(&header(id, 0, 0, 1), id as u64);
        }
        assert_eq!(
            crowded.check(&header(1_000_000, 0, 7, 1)),
            SequenceCheck::Append,
            "after one was forgotten"
        );
    }

    #[test]
    fn sequences_wrap() {
        let mut state = ProducerState::default();
        state.record(&header(1, 0, i32::MAX - 1, 2), 0);
        assert_eq!(state.check(&header(1, 0, 0, 1)), SequenceCheck::Append);
    }

    #[test]
    fn only_the_last_batches_are_remembered() {
        let remembered = PRODUCER_BATCHES_REMEMBERED as i32;
        let mut state = ProducerState::default();
        for i in 0..remembered + 3 {
            state.record(&header(1, 0, i, 1), i as u64);
        }
        let newest = remembered + 2;
        assert_eq!(
            state.check(&header(1, 0, newest, 1)),
            SequenceCheck::Duplicate {
                base_offset: newest as u64
            }
        );
        let oldest_kept = newest + 1 - remembered;
        assert_eq!(
            state.check(&header(1, 0, oldest_kept, 1)),
            SequenceCheck::Duplicate {
                base_offset: oldest_kept as u64
            }
        );
        assert_eq!(
            state.check(&header(1, 0, oldest_kept - 1, 1)),
            SequenceCheck::OutOfOrder,
            "forgotten"
        );
    }
}
