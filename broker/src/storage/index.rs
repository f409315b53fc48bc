//! Per-segment sparse indexes and their on-disk form.
//!
//! A [`SegmentIndex`] is built batch by batch as a segment is appended or scanned. It holds:
//! - the offset index: one `(relative offset, file position)` entry per `index_interval_bytes`
//!   of log, so a read at any offset costs one binary search in memory and one disk read;
//! - the time index: `(largest timestamp so far, relative offset)` entries, strictly increasing
//!   in both, so a lookup by time starts its scan at a batch no later than the answer;
//! - the segment's summary: logical size, next offset and largest timestamp.
//!
//! Sealed segments persist it in two files next to the `.log`, each ending in a trailer with a
//! CRC-32C (layout in `docs/format.md`). A missing or damaged index file is rebuilt from the log.

use sluice_protocol::BatchHeader;

pub const OFFSET_ENTRY_BYTES: usize = 8;
pub const TIME_ENTRY_BYTES: usize = 12;
pub const OFFSET_TRAILER_BYTES: usize = 48;
pub const TIME_TRAILER_BYTES: usize = 16;
const OFFSET_MAGIC: &[u8; 4] = b"SLIX";
const TIME_MAGIC: &[u8; 4] = b"SLTI";
const INDEX_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    base_offset: u64,
    interval_bytes: u32,
    offsets: Vec<(u32, u32)>,
    times: Vec<(i64, u32)>,
    bytes_since_entry: u64,
    size_bytes: u64,
    next_offset: u64,
    max_timestamp: i64,
}

impl SegmentIndex {
    pub fn new(base_offset: u64, interval_bytes: u32) -> SegmentIndex {
        SegmentIndex {
            base_offset,
            interval_bytes,
            offsets: Vec::new(),
            times: Vec::new(),
            bytes_since_entry: 0,
            size_bytes: 0,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
        }
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }
    /// Logical size of the segment: the end of its last batch.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }
    /// Largest timestamp of any batch, `i64::MIN` when empty.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }
    pub fn offset_entries(&self) -> usize {
        self.offsets.len()
    }
    /// File positions of the offset-index entries.
    pub fn indexed_positions(&self) -> impl Iterator<Item = u64> + '_ {
        self.offsets
            .iter()
            .map(|&(_, position)| u64::from(position))
    }

    /// File positions of the indexed batches that start in `(after, up_to]`: batch boundaries a
    /// zero-copy read may end at without reading the file.
    pub fn boundaries_in(&self, after: u64, up_to: u64) -> Vec<u64> {
        let from = self
            .offsets
            .partition_point(|&(_, position)| u64::from(position) <= after);
        self.offsets[from..]
            .iter()
            .map(|&(_, position)| u64::from(position))
            .take_while(|&position| position <= up_to)
            .collect()
    }

    pub fn time_entries(&self) -> usize {
        self.times.len()
    }

    /// Records the batch that was just placed at `position`. Batches must arrive in log order.
    pub fn observe(&mut self, position: u64, header: &BatchHeader) {
        assert_eq!(
            position, self.size_bytes,
            "batches must be indexed in log order"
        );
        assert_eq!(
            header.base_offset, self.next_offset,
            "offsets must be contiguous"
        );
        let relative = u32::try_from(header.base_offset - self.base_offset)
            .expect("a segment holds fewer than 2^32 offsets");
        let position32 = u32::try_from(position).expect("segment positions fit in u32");
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        if self.offsets.is_empty() || self.bytes_since_entry >= u64::from(self.interval_bytes) {
            self.offsets.push((relative, position32));
            self.bytes_since_entry = 0;
            if self
                .times
                .last()
                .is_none_or(|&(ts, _)| self.max_timestamp > ts)
            {
                self.times.push((self.max_timestamp, relative));
            }
        }
        self.bytes_since_entry += u64::from(header.batch_len);
        self.size_bytes += u64::from(header.batch_len);
        self.next_offset = header.next_offset();
    }

    /// File position of the last indexed batch starting at or before `offset`: a read for
    /// `offset` starts there and skips at most `index_interval_bytes` of earlier batches.
    pub fn position_for_offset(&self, offset: u64) -> u64 {
        self.entry_for_offset(offset).1
    }

    /// The last indexed batch starting at or before `offset`, as (its base offset, its file
    /// position): a read starting there can check that every batch continues the sequence.
    pub fn entry_for_offset(&self, offset: u64) -> (u64, u64) {
        let relative = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let after = self.offsets.partition_point(|&(rel, _)| rel <= relative);
        match after {
            0 => (self.base_offset, 0),
            n => {
                let (rel, position) = self.offsets[n - 1];
                (self.base_offset + u64::from(rel), u64::from(position))
            }
        }
    }

    /// An offset from which a forward scan finds the first batch whose largest timestamp is at
    /// or after `timestamp`: every batch before it has a smaller timestamp.
    pub fn scan_start_for_timestamp(&self, timestamp: i64) -> u64 {
        let below = self.times.partition_point(|&(ts, _)| ts < timestamp);
        match below {
            0 => self.base_offset,
            n => self.base_offset + u64::from(self.times[n - 1].1),
        }
    }

    /// The `.index` file: entries, then a trailer holding the segment summary and a CRC.
    pub fn encode_offset_index(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_BYTES + OFFSET_TRAILER_BYTES);
        for &(rel, pos) in &self.offsets {
            out.extend_from_slice(&rel.to_le_bytes());
            out.extend_from_slice(&pos.to_le_bytes());
        }
        out.extend_from_slice(OFFSET_MAGIC);
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.offsets.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.interval_bytes.to_le_bytes());
        out.extend_from_slice(&self.size_bytes.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }

    /// The `.timeindex` file: entries, then a trailer with the count and a CRC.
    pub fn encode_time_index(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * TIME_ENTRY_BYTES + TIME_TRAILER_BYTES);
        for &(ts, rel) in &self.times {
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&rel.to_le_bytes());
        }
        out.extend_from_slice(TIME_MAGIC);
        out.extend_from_slice(&(self.times.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }

    /// Rebuilds a sealed segment's index from its two files, checking everything that can be
    /// checked without reading the log: trailers, CRCs, monotonic entries, positions inside the
    /// segment. Returns why the files are unusable so the caller can rebuild them from the log.
    pub fn decode(
        base_offset: u64,
        offset_file: &[u8],
        time_file: &[u8],
    ) -> Result<SegmentIndex, String> {
        let fail = |why: &str| Err(why.to_string());
        if offset_file.len() < OFFSET_TRAILER_BYTES
            || (offset_file.len() - OFFSET_TRAILER_BYTES) % OFFSET_ENTRY_BYTES != 0
        {
            return fail("offset index has an impossible length");
        }
        let trailer_at = offset_file.len() - OFFSET_TRAILER_BYTES;
        let trailer = &offset_file[trailer_at..];
        let u32_at =
            |b: &[u8], p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap_or([0; 4]));
        let u64_at =
            |b: &[u8], p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap_or([0; 8]));
        if &trailer[0..4] != OFFSET_MAGIC || u32_at(trailer, 4) != INDEX_VERSION {
            return fail("offset index trailer is missing or of another version");
        }
        if crc32c::crc32c(&offset_file[..trailer_at + 40]) != u32_at(trailer, 40)
            || u32_at(trailer, 44) != 0
        {
            return fail("offset index CRC mismatch");
        }
        let count = u32_at(trailer, 8) as usize;
        if count * OFFSET_ENTRY_BYTES != trailer_at {
            return fail("offset index entry count disagrees with its length");
        }
        let interval_bytes = u32_at(trailer, 12);
        let size_bytes = u64_at(trailer, 16);
        let next_offset = u64_at(trailer, 24);
        let max_timestamp = u64_at(trailer, 32) as i64;
        if next_offset < base_offset {
            return fail("offset index next offset is below the segment base");
        }
        let offsets: Vec<(u32, u32)> = (0..count)
            .map(|i| {
                let at = i * OFFSET_ENTRY_BYTES;
                (u32_at(offset_file, at), u32_at(offset_file, at + 4))
            })
            .collect();
        let ordered = offsets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        let in_range = offsets.iter().all(|&(rel, pos)| {
            u64::from(pos) < size_bytes && base_offset + u64::from(rel) < next_offset
        });
        if !ordered
            || !in_range
            || (size_bytes > 0) != (count > 0)
            || offsets.first().is_some_and(|e| *e != (0, 0))
        {
            return fail("offset index entries are out of order or out of range");
        }

        if time_file.len() < TIME_TRAILER_BYTES
            || (time_file.len() - TIME_TRAILER_BYTES) % TIME_ENTRY_BYTES != 0
        {
            return fail("time index has an impossible length");
        }
        let time_trailer_at = time_file.len() - TIME_TRAILER_BYTES;
        let time_trailer = &time_file[time_trailer_at..];
        if &time_trailer[0..4] != TIME_MAGIC {
            return fail("time index trailer is missing");
        }
        if crc32c::crc32c(&time_file[..time_trailer_at + 8]) != u32_at(time_trailer, 8)
            || u32_at(time_trailer, 12) != 0
        {
            return fail("time index CRC mismatch");
        }
        let time_count = u32_at(time_trailer, 4) as usize;
        if time_count * TIME_ENTRY_BYTES != time_trailer_at {
            return fail("time index entry count disagrees with its length");
        }
        let times: Vec<(i64, u32)> = (0..time_count)
            .map(|i| {
                let at = i * TIME_ENTRY_BYTES;
                (u64_at(time_file, at) as i64, u32_at(time_file, at + 8))
            })
            .collect();
        let times_ordered = times.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        let times_in_range = times
            .iter()
            .all(|&(_, rel)| base_offset + u64::from(rel) < next_offset);
        if !times_ordered || !times_in_range || (count > 0) != (time_count > 0) {
            return fail("time index entries are out of order or out of range");
        }
        if times.last().is_some_and(|&(ts, _)| ts > max_timestamp) {
            return fail("time index holds a timestamp above the segment's largest");
        }
        let bytes_since_entry = size_bytes - offsets.last().map_or(0, |&(_, pos)| u64::from(pos));
        Ok(SegmentIndex {
            base_offset,
            interval_bytes,
            offsets,
            times,
            // What `observe` would have counted: the bytes from the last indexed batch to the
            // end, so an active segment reopened from its index goes on as one scanned would.
            bytes_since_entry,
            size_bytes,
            next_offset,
            max_timestamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (record count, batch bytes, max timestamp) of each batch.
    fn batches() -> impl Strategy<Value = Vec<(u32, u32, i64)>> {
        proptest::collection::vec((1u32..20, 64u32..5000, 0i64..10_000), 1..200)
    }

    fn build(
        base: u64,
        interval: u32,
        batches: &[(u32, u32, i64)],
    ) -> (SegmentIndex, Vec<(u64, u64, u64, i64)>) {
        let mut index = SegmentIndex::new(base, interval);
        let mut layout = Vec::new();
        let (mut offset, mut position) = (base, 0u64);
        for &(count, len, ts) in batches {
            let header = BatchHeader {
                base_offset: offset,
                batch_len: len,
                leader_epoch: 0,
                magic: sluice_protocol::FORMAT_VERSION,
                crc: 0,
                attributes: 0,
                last_offset_delta: count - 1,
                record_count: count,
                first_timestamp: ts,
                max_timestamp: ts,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
            };
            index.observe(position, &header);
            layout.push((offset, offset + u64::from(count), position, ts));
            offset += u64::from(count);
            position += u64::from(len);
        }
        (index, layout)
    }

    proptest! {
        #[test]
        fn lookups_land_at_or_before_the_batch_and_within_an_interval(
            base in 0u64..1_000_000, interval in 1u32..20_000, batches in batches(), probe: prop::sample::Index,
        ) {
            let (index, layout) = build(base, interval, &batches);
            let (first, next, position, _) = layout[probe.index(layout.len())];
            let target = first + (next - first) / 2;
            let (entry_offset, start) = index.entry_for_offset(target);
            prop_assert!(start <= position);
            prop_assert!(entry_offset <= first);
            // The entry is a batch boundary with that offset.
            prop_assert!(layout.iter().any(|&(o, _, p, _)| o == entry_offset && p == start));
            // Skipped bytes are bounded by the interval plus one batch.
            let max_len = batches.iter().map(|b| u64::from(b.1)).max().unwrap_or(0);
            prop_assert!(position - start <= u64::from(interval) + max_len);
        }

        #[test]
        fn time_lookups_never_skip_the_answer(batches in batches(), target in 0i64..10_000) {
            let (index, layout) = build(0, 4096, &batches);
            let start = index.scan_start_for_timestamp(target);
            let answer = layout.iter().find(|&&(_, _, _, ts)| ts >= target).map(|l| l.0);
            if let Some(answer) = answer {
                prop_assert!(start <= answer, "scan starts at {start}, answer at {answer}");
            }
            prop_assert!(layout.iter().filter(|&&(o, _, _, _)| o < start).all(|&(_, _, _, ts)| ts < target));
        }

        #[test]
        fn index_files_round_trip_and_detect_damage(
            base in 0u64..1_000_000, batches in batches(), flip: prop::sample::Index, bit in 0u8..8,
        ) {
            let (index, _) = build(base, 4096, &batches);
            let offsets = index.encode_offset_index();
            let times = index.encode_time_index();
            let decoded = SegmentIndex::decode(base, &offsets, &times).unwrap();
            prop_assert_eq!(decoded.size_bytes(), index.size_bytes());
            prop_assert_eq!(decoded.next_offset(), index.next_offset());
            prop_assert_eq!(decoded.max_timestamp(), index.max_timestamp());
            prop_assert_eq!(decoded.offsets.clone(), index.offsets.clone());
            prop_assert_eq!(decoded.times.clone(), index.times.clone());
            let mut damaged = offsets.clone();
            let at = flip.index(damaged.len());
            damaged[at] ^= 1 << bit;
            prop_assert!(SegmentIndex::decode(base, &damaged, &times).is_err());
            let mut damaged = times.clone();
            let at = flip.index(damaged.len());
            damaged[at] ^= 1 << bit;
            prop_assert!(SegmentIndex::decode(base, &offsets, &damaged).is_err());
        }
    }
}
