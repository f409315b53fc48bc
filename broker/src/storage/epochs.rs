//! The leader-epoch history of a partition (pure): for each leader epoch whose batches are in
//! the log, the offset its first batch starts at. This is what lets a follower find, after a
//! leader change, where its log and the new leader's diverge (Kafka's `OffsetForLeaderEpoch`,
//! KIP-101 and KIP-279): it asks the leader for the end of its own last epoch and truncates
//! there, never by high watermark alone.
//!
//! On disk (`leader-epoch-checkpoint` in the partition directory, replaced atomically):
//!
//! ```text
//! [4 magic "SLEP"][u32 version 1][u32 count][count × (u32 epoch, u64 start offset)][u32 crc]
//! ```
//!
//! little-endian, CRC-32C over everything before it. The file may lag the log by the batches of
//! the active segment (recovery scans them and observes their epochs again) and may run past
//! the log end (entries at or past the end are dropped on open).

/// One epoch's start: its first batch's base offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: u32,
    pub start_offset: u64,
}

/// A batch's epoch went backwards: a leader never writes under an older epoch than the log
/// already holds, so such a batch comes from a deposed leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("epoch {epoch} at offset {offset} is older than epoch {latest} already in the log")]
pub struct EpochRegression {
    pub epoch: u32,
    pub offset: u64,
    pub latest: u32,
}

/// The answer to "where does epoch E end in this log" (Kafka's `OffsetForLeaderEpoch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochEnd {
    /// The largest epoch at or below the one asked for, and the offset its batches end at
    /// (exclusive): the start of the next higher epoch, or the log end for the latest.
    Found { epoch: u32, end_offset: u64 },
    /// The log holds no epoch at or above the one asked for (or no epochs at all): the asker
    /// cannot be told a divergence point.
    Unknown,
}

/// The history, oldest first; epochs and start offsets strictly increase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    entries: Vec<EpochStart>,
}

const MAGIC: &[u8; 4] = b"SLEP";
const VERSION: u32 = 1;
const ENTRY_BYTES: usize = 12;
const HEADER_BYTES: usize = 12;

impl EpochHistory {
    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochStart> {
        self.entries.last().copied()
    }

    /// Records that a batch of `epoch` starts at `offset` (batches are observed in offset
    /// order). Returns whether the history changed (a new epoch began).
    pub fn observe(&mut self, epoch: u32, offset: u64) -> Result<bool, EpochRegression> {
        match self.entries.last() {
            Some(last) if epoch < last.epoch => Err(EpochRegression {
                epoch,
                offset,
                latest: last.epoch,
            }),
            Some(last) if epoch == last.epoch => Ok(false),
            Some(last) => {
                assert!(
                    offset > last.start_offset,
                    "epoch {epoch} starts at {offset}, not after epoch {} at {}",
                    last.epoch,
                    last.start_offset
                );
                self.entries.push(EpochStart {
                    epoch,
                    start_offset: offset,
                });
                Ok(true)
            }
            None => {
                self.entries.push(EpochStart {
                    epoch,
                    start_offset: offset,
                });
                Ok(true)
            }
        }
    }

    /// Whether a batch of `epoch` may be appended now.
    pub fn accepts(&self, epoch: u32) -> bool {
        self.entries.last().is_none_or(|last| epoch >= last.epoch)
    }

    /// Forgets epochs that start at or after `end` (the log was truncated to `end`). Returns
    /// whether anything changed.
    pub fn truncate_from(&mut self, end: u64) -> bool {
        let keep = self.entries.partition_point(|e| e.start_offset < end);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// Forgets what lies before `log_start` (retention deleted it): the epoch in force at
    /// `log_start` is kept, starting there. Returns whether anything changed.
    pub fn truncate_before(&mut self, log_start: u64) -> bool {
        let in_force = self
            .entries
            .partition_point(|e| e.start_offset <= log_start);
        if in_force == 0 {
            return false;
        }
        let drop = in_force - 1;
        let moved = self.entries[drop].start_offset != log_start;
        self.entries.drain(..drop);
        self.entries[0].start_offset = log_start;
        drop > 0 || moved
    }

    /// Where `epoch` ends in a log whose end is `log_end` (Kafka's rules: the latest epoch ends
    /// at the log end; an older one where the next higher epoch starts; an epoch older than all
    /// known ends where the first known one starts).
    pub fn end_of(&self, epoch: u32, log_end: u64) -> EpochEnd {
        let Some(latest) = self.entries.last() else {
            return EpochEnd::Unknown;
        };
        if epoch == latest.epoch {
            return EpochEnd::Found {
                epoch,
                end_offset: log_end,
            };
        }
        let higher = self.entries.partition_point(|e| e.epoch <= epoch);
        let Some(next) = self.entries.get(higher) else {
            return EpochEnd::Unknown;
        };
        let epoch = match higher {
            0 => epoch,
            n => self.entries[n - 1].epoch,
        };
        EpochEnd::Found {
            epoch,
            end_offset: next.start_offset,
        }
    }

    /// The checkpoint file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.entries.len() * ENTRY_BYTES + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for entry in &self.entries {
            out.extend_from_slice(&entry.epoch.to_le_bytes());
            out.extend_from_slice(&entry.start_offset.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a checkpoint file, checking its magic, version, length, CRC and order.
    pub fn decode(bytes: &[u8]) -> Result<EpochHistory, &'static str> {
        if bytes.len() < HEADER_BYTES + 4 {
            return Err("shorter than its header");
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let u32_at =
            |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        if &body[..4] != MAGIC {
            return Err("bad magic");
        }
        if u32_at(4) != VERSION {
            return Err("unknown version");
        }
        let count = u32_at(8) as usize;
        if body.len() != HEADER_BYTES + count * ENTRY_BYTES {
            return Err("length does not match the entry count");
        }
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != stored {
            return Err("CRC mismatch");
        }
        let mut history = EpochHistory::default();
        for at in (HEADER_BYTES..body.len()).step_by(ENTRY_BYTES) {
            let epoch = u32_at(at);
            let mut start = [0u8; 8];
            start.copy_from_slice(&body[at + 4..at + 12]);
            let start_offset = u64::from_le_bytes(start);
            if let Some(last) = history.entries.last() {
                if epoch <= last.epoch || start_offset <= last.start_offset {
                    return Err("entries out of order");
                }
            }
            history.entries.push(EpochStart {
                epoch,
                start_offset,
            });
        }
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn history(entries: &[(u32, u64)]) -> EpochHistory {
        let mut h = EpochHistory::default();
        for &(epoch, offset) in entries {
            h.observe(epoch, offset).unwrap();
        }
        h
    }

    #[test]
    fn observing_records_only_new_epochs_and_refuses_older_ones() {
        let mut h = EpochHistory::default();
        assert_eq!(h.observe(1, 0), Ok(true));
        assert_eq!(h.observe(1, 5), Ok(false));
        assert_eq!(h.observe(3, 9), Ok(true));
        assert_eq!(
            h.observe(2, 12),
            Err(EpochRegression {
                epoch: 2,
                offset: 12,
                latest: 3
            })
        );
        assert!(h.accepts(3) && h.accepts(4) && !h.accepts(2));
        assert_eq!(h, history(&[(1, 0), (3, 9)]));
    }

    /// Kafka's `OffsetForLeaderEpoch` answers, including the KIP-279 case: a follower whose last
    /// epoch the leader never had gets the largest epoch below it and where that one ends.
    #[test]
    fn end_of_an_epoch_follows_kafkas_rules() {
        let h = history(&[(1, 0), (2, 10), (5, 30)]);
        let found = |epoch, end_offset| EpochEnd::Found { epoch, end_offset };
        assert_eq!(
            h.end_of(5, 42),
            found(5, 42),
            "the latest ends at the log end"
        );
        assert_eq!(h.end_of(1, 42), found(1, 10));
        assert_eq!(h.end_of(2, 42), found(2, 30));
        assert_eq!(
            h.end_of(3, 42),
            found(2, 30),
            "an epoch never led here: the one below"
        );
        assert_eq!(h.end_of(4, 42), found(2, 30));
        assert_eq!(
            h.end_of(0, 42),
            found(0, 0),
            "older than all: where the first starts"
        );
        assert_eq!(h.end_of(6, 42), EpochEnd::Unknown, "newer than all");
        assert_eq!(EpochHistory::default().end_of(1, 0), EpochEnd::Unknown);
    }

    #[test]
    fn truncation_from_the_end_and_from_the_start() {
        let mut h = history(&[(1, 0), (2, 10), (5, 30)]);
        assert!(!h.truncate_from(31));
        assert!(h.truncate_from(30));
        assert_eq!(h, history(&[(1, 0), (2, 10)]));
        assert!(h.truncate_from(5));
        assert_eq!(h, history(&[(1, 0)]));

        let mut h = history(&[(1, 0), (2, 10), (5, 30)]);
        assert!(!h.truncate_before(0));
        assert!(h.truncate_before(12));
        assert_eq!(h, history(&[(2, 12), (5, 30)]));
        assert!(h.truncate_before(30));
        assert_eq!(h, history(&[(5, 30)]));
        assert!(!h.truncate_before(30));
    }

    #[test]
    fn checkpoint_files_round_trip_and_damage_is_refused() {
        let h = history(&[(1, 0), (2, 10), (7, 1 << 40)]);
        let bytes = h.encode();
        assert_eq!(EpochHistory::decode(&bytes), Ok(h.clone()));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(EpochHistory::decode(&damaged).is_err(), "byte {at}");
        }
        assert!(EpochHistory::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(
            EpochHistory::decode(&EpochHistory::default().encode()),
            Ok(EpochHistory::default())
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes: Vec<u8>) {
            let _ = EpochHistory::decode(&bytes);
        }

        /// Against a model: the epoch of every offset, kept as a plain list.
        #[test]
        fn end_of_agrees_with_a_per_offset_model(
            runs in proptest::collection::vec((1u32..4, 1u64..6), 1..8),
            asked in 0u32..30,
        ) {
            let mut h = EpochHistory::default();
            let mut epochs = Vec::new();
            let mut epoch = 0;
            for (step, len) in runs {
                epoch += step;
                h.observe(epoch, epochs.len() as u64).unwrap();
                epochs.extend(std::iter::repeat_n(epoch, len as usize));
            }
            let end = epochs.len() as u64;
            let expected = if epochs.iter().all(|&e| e <= asked) && epochs.last() != Some(&asked) {
                EpochEnd::Unknown
            } else if epochs.last() == Some(&asked) {
                EpochEnd::Found { epoch: asked, end_offset: end }
            } else {
                // The first offset of a higher epoch; the epoch answered is the largest <= asked.
                let next = epochs.iter().position(|&e| e > asked).unwrap() as u64;
                let below = epochs.iter().copied().filter(|&e| e <= asked).max().unwrap_or(asked);
                EpochEnd::Found { epoch: below, end_offset: next }
            };
            prop_assert_eq!(h.end_of(asked, end), expected);
        }
    }
}
