//! Log compaction's pure core: which records a cleaned batch keeps, how emptied batches merge,
//! the bounded key → latest-offset map, and the batch codecs compaction needs. No I/O: the
//! cleaner in [`super::log`] reads segments, feeds their batches through this module and writes
//! what it returns; the unit tests here check the rules on batches in memory.
//!
//! What a cleaned segment keeps (Kafka's semantics):
//! - of the records with a key, the latest per key, where "latest" looks at every batch from
//!   the first dirty offset to the end of the log, the active segment included (which is read,
//!   never rewritten);
//! - records without a key (a compacted log refuses them on append; an older log may hold some);
//! - tombstones (a key with a null value) until `delete_retention` after the cleaning that first
//!   saw them: that cleaning stamps the batch's delete horizon (attribute bit 6, the horizon in
//!   `base_timestamp`, record timestamps unchanged), and a cleaning after the horizon drops them;
//! - control batches and transactional batches whole (transactions are not implemented: their
//!   records neither shadow nor are shadowed);
//! - batches whose codec this broker cannot decompress (snappy) whole, their keys unseen;
//! - the header of each idempotent producer's last batch, as an empty batch if its records go,
//!   so producer state can still be rebuilt from the log.
//!
//! No offset gaps: a batch whose records all go becomes an *empty* batch (record count 0, same
//! base offset and `last_offset_delta`), and consecutive empty batches (with one leader epoch)
//! merge into one empty batch spanning their offsets.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::{Read, Write};

use sluice_protocol::batch::{
    compute_crc, ATTR_COMPRESSION_MASK, ATTR_CONTROL, ATTR_DELETE_HORIZON,
    ATTR_TIMESTAMP_LOG_APPEND, ATTR_TRANSACTIONAL,
};
use sluice_protocol::varint::{get_varint32, put_varint, varint_len};
use sluice_protocol::{BatchHeader, Compression, Record, RecordIter, BATCH_HEADER_BYTES};

use super::index::SegmentIndex;
use crate::limits::{COMPACTION_DECOMPRESSED_BYTES_MAX, COMPACTION_PRODUCERS_MAX};

/// A 128-bit digest of a key. Two independently keyed SipHash instances with random keys per
/// map: the map never leaves memory, so the keys need not be stable, and no one can choose keys
/// that collide (a collision would drop a live record).
#[derive(Debug, Clone)]
struct KeyDigester {
    a: RandomState,
    b: RandomState,
}

impl KeyDigester {
    fn new() -> KeyDigester {
        KeyDigester {
            a: RandomState::new(),
            b: RandomState::new(),
        }
    }

    fn digest(&self, key: &[u8]) -> u128 {
        (u128::from(self.a.hash_one(key)) << 64) | u128::from(self.b.hash_one(key))
    }
}

/// Key digest → offset of the latest record with that key seen so far, holding at most
/// `capacity` keys.
#[derive(Debug)]
pub struct OffsetMap {
    digester: KeyDigester,
    latest: HashMap<u128, u64>,
    capacity: usize,
}

impl OffsetMap {
    pub fn new(capacity: usize) -> OffsetMap {
        OffsetMap {
            digester: KeyDigester::new(),
            latest: HashMap::new(),
            capacity,
        }
    }

    /// Records that `key` was written at `offset` (offsets arrive in increasing order).
    /// Returns `false`, changing nothing, when the key is new and the map is full.
    pub fn put(&mut self, key: &[u8], offset: u64) -> bool {
        let digest = self.digester.digest(key);
        if let Some(latest) = self.latest.get_mut(&digest) {
            assert!(*latest <= offset, "keys are mapped in offset order");
            *latest = offset;
            return true;
        }
        if self.latest.len() >= self.capacity {
            return false;
        }
        self.latest.insert(digest, offset);
        true
    }

    /// The offset of the latest record with `key`, if the map saw one.
    pub fn latest(&self, key: &[u8]) -> Option<u64> {
        self.latest.get(&self.digester.digest(key)).copied()
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// Each idempotent producer's last batch in the log (its base offset), bounded: past
/// [`COMPACTION_PRODUCERS_MAX`] producers every idempotent batch counts as possibly last.
#[derive(Debug, Default)]
pub struct ProducerLasts {
    last: HashMap<i64, u64>,
    overflowed: bool,
}

impl ProducerLasts {
    pub fn observe(&mut self, header: &BatchHeader) {
        if header.producer_id < 0 || self.overflowed {
            return;
        }
        if self.last.len() >= COMPACTION_PRODUCERS_MAX
            && !self.last.contains_key(&header.producer_id)
        {
            self.overflowed = true;
            self.last.clear();
            return;
        }
        self.last.insert(header.producer_id, header.base_offset);
    }

    /// Whether the batch must keep its header (it may be its producer's last).
    pub fn keeps_header(&self, header: &BatchHeader) -> bool {
        header.producer_id >= 0
            && (self.overflowed || self.last.get(&header.producer_id) == Some(&header.base_offset))
    }
}

/// The records section of a batch, decompressed; `None` when this broker cannot read it (an
/// unsupported codec, a section that would inflate past the bound, or bytes the codec refuses:
/// the broker never checked a compressed section on append).
pub fn records_section<'a>(
    header: &BatchHeader,
    batch: &'a [u8],
) -> Option<std::borrow::Cow<'a, [u8]>> {
    let section = batch.get(BATCH_HEADER_BYTES..header.batch_len as usize)?;
    match header.compression()? {
        Compression::None => Some(std::borrow::Cow::Borrowed(section)),
        codec => decompress(codec, section, COMPACTION_DECOMPRESSED_BYTES_MAX)
            .ok()
            .map(std::borrow::Cow::Owned),
    }
}

/// Whether compaction looks inside this batch at all: control and transactional batches are
/// kept whole.
fn is_data(header: &BatchHeader) -> bool {
    header.attributes & (ATTR_CONTROL | ATTR_TRANSACTIONAL) == 0
}

/// Adds the keyed records of one batch to the map, in offset order. Returns `false` when the
/// map filled up on this batch (its earlier keys may have gone in: harmless, every mapped offset
/// is a real later record).
pub fn map_batch(map: &mut OffsetMap, header: &BatchHeader, batch: &[u8]) -> bool {
    if !is_data(header) || header.record_count == 0 {
        return true;
    }
    let Some(section) = records_section(header, batch) else {
        return true;
    };
    for record in RecordIter::new(header, &section) {
        let Ok(record) = record else {
            return true;
        };
        if let Some(key) = record.key {
            if !map.put(key, header.base_offset + u64::from(record.offset_delta)) {
                return false;
            }
        }
    }
    true
}

/// Whether every record of a produced batch has a key (what a compacted log requires).
/// `Err(index)` names the first keyless record. Batches this broker cannot decompress are not
/// checked (`Ok`): the cleaner keeps them whole.
pub fn check_keys(header: &BatchHeader, batch: &[u8]) -> Result<(), u32> {
    if !is_data(header) {
        return Ok(());
    }
    let Some(section) = records_section(header, batch) else {
        return Ok(());
    };
    for (index, record) in RecordIter::new(header, &section).enumerate() {
        match record {
            Ok(record) if record.key.is_none() => return Err(index as u32),
            Ok(_) => {}
            // A malformed compressed section: the cleaner keeps such batches whole.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// What cleaning decided for one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleaned {
    /// Kept byte for byte.
    Unchanged,
    /// Rebuilt: fewer records, or its delete horizon stamped.
    Rebuilt(Vec<u8>),
    /// Every record went: the batch becomes an empty one spanning the same offsets.
    Emptied,
}

/// What cleaning one batch removed and stamped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCleaning {
    pub records_removed: u64,
    /// The delete horizon of surviving tombstones, if any survive.
    pub tombstone_horizon: Option<i64>,
}

/// The time settings of a cleaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanClock {
    /// Now, in ms since the Unix epoch.
    pub now_ms: i64,
    /// How long tombstones survive the cleaning that first sees them, in ms.
    pub delete_retention_ms: i64,
}

/// Decides what stays of one stored batch. `map` holds the latest offset of every key seen from
/// the first dirty offset to the end of the log: a keyed record older than its key's latest goes;
/// a tombstone goes once the batch's delete horizon (stamped by the first cleaning that kept
/// it) has passed.
pub fn clean_batch(
    header: &BatchHeader,
    batch: &[u8],
    map: &OffsetMap,
    clock: CleanClock,
) -> (Cleaned, BatchCleaning) {
    let mut stats = BatchCleaning::default();
    if !is_data(header) {
        return (Cleaned::Unchanged, stats);
    }
    if header.record_count == 0 {
        return (Cleaned::Emptied, stats);
    }
    let Some(section) = records_section(header, batch) else {
        return (Cleaned::Unchanged, stats);
    };
    let horizon = (header.attributes & ATTR_DELETE_HORIZON != 0).then_some(header.first_timestamp);
    let mut kept: Vec<(&[u8], Record<'_>)> = Vec::new();
    let mut rest: &[u8] = &section;
    let mut surviving_tombstone = false;
    while !rest.is_empty() {
        let Some((len, used)) = get_varint32(rest) else {
            return (Cleaned::Unchanged, BatchCleaning::default());
        };
        let Some(end) = usize::try_from(len).ok().map(|l| l + used) else {
            return (Cleaned::Unchanged, BatchCleaning::default());
        };
        let Some(raw) = rest.get(..end) else {
            return (Cleaned::Unchanged, BatchCleaning::default());
        };
        rest = &rest[end..];
        let record = match RecordIter::new(header, raw).next() {
            Some(Ok(record)) => record,
            _ => return (Cleaned::Unchanged, BatchCleaning::default()),
        };
        let offset = header.base_offset + u64::from(record.offset_delta);
        let shadowed = record
            .key
            .and_then(|key| map.latest(key))
            .is_some_and(|latest| latest > offset);
        let tombstone = record.key.is_some() && record.value.is_none();
        let expired = tombstone && horizon.is_some_and(|h| clock.now_ms >= h);
        if shadowed || expired {
            stats.records_removed += 1;
            continue;
        }
        surviving_tombstone |= tombstone;
        kept.push((raw, record));
    }
    if kept.is_empty() {
        return (Cleaned::Emptied, stats);
    }
    let new_horizon = match horizon {
        Some(h) => Some(h),
        None if surviving_tombstone => Some(clock.now_ms.saturating_add(clock.delete_retention_ms)),
        None => None,
    };
    if surviving_tombstone {
        stats.tombstone_horizon = new_horizon;
    }
    if stats.records_removed == 0 && new_horizon == horizon {
        return (Cleaned::Unchanged, stats);
    }
    match rebuild(header, &kept, new_horizon) {
        Some(bytes) => (Cleaned::Rebuilt(bytes), stats),
        // The codec failed to compress: keep the batch as it was.
        None => (Cleaned::Unchanged, BatchCleaning::default()),
    }
}

/// A batch with only the `kept` records (raw bytes and decoded), recompressed with the same
/// codec. With a new delete horizon the base timestamp becomes the horizon and the records'
/// timestamp deltas are re-encoded so every record keeps its timestamp; otherwise the records
/// are copied byte for byte.
fn rebuild(
    header: &BatchHeader,
    kept: &[(&[u8], Record<'_>)],
    horizon: Option<i64>,
) -> Option<Vec<u8>> {
    let restamp = horizon.is_some() && header.attributes & ATTR_DELETE_HORIZON == 0;
    let base_timestamp = horizon.unwrap_or(header.first_timestamp);
    let mut records = Vec::with_capacity(kept.iter().map(|(raw, _)| raw.len()).sum());
    for (raw, record) in kept {
        if restamp {
            encode_record(
                &mut records,
                record,
                record.timestamp.wrapping_sub(base_timestamp),
            );
        } else {
            records.extend_from_slice(raw);
        }
    }
    let max_timestamp = if header.attributes & ATTR_TIMESTAMP_LOG_APPEND != 0 {
        header.max_timestamp
    } else {
        kept.iter()
            .map(|(_, r)| r.timestamp)
            .max()
            .unwrap_or(header.max_timestamp)
    };
    let codec = header.compression()?;
    let section = match codec {
        Compression::None => records,
        codec => compress(codec, &records).ok()?,
    };
    let mut attributes = header.attributes;
    if horizon.is_some() {
        attributes |= ATTR_DELETE_HORIZON;
    }
    let fields = HeaderFields {
        base_offset: header.base_offset,
        leader_epoch: header.leader_epoch,
        attributes,
        last_offset_delta: header.last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        base_sequence: header.base_sequence,
        record_count: kept.len() as u32,
    };
    Some(fields.encode(&section))
}

/// One record, with a new timestamp delta, exactly as Kafka encodes it.
fn encode_record(out: &mut Vec<u8>, record: &Record<'_>, timestamp_delta: i64) {
    let nullable_len = |b: Option<&[u8]>| match b {
        None => varint_len(-1),
        Some(b) => varint_len(b.len() as i64) + b.len(),
    };
    let mut body = 1
        + varint_len(timestamp_delta)
        + varint_len(i64::from(record.offset_delta))
        + nullable_len(record.key)
        + nullable_len(record.value)
        + varint_len(record.headers.len() as i64);
    for (key, value) in &record.headers {
        body += varint_len(key.len() as i64) + key.len() + nullable_len(*value);
    }
    let put_nullable = |out: &mut Vec<u8>, b: Option<&[u8]>| match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    };
    put_varint(out, body as i64);
    // Record attributes are unused by Kafka; RecordIter does not expose them and Kafka's
    // encoders write zero.
    out.push(0);
    put_varint(out, timestamp_delta);
    put_varint(out, i64::from(record.offset_delta));
    put_nullable(out, record.key);
    put_nullable(out, record.value);
    put_varint(out, record.headers.len() as i64);
    for (key, value) in &record.headers {
        put_varint(out, key.len() as i64);
        out.extend_from_slice(key);
        put_nullable(out, *value);
    }
}

/// The fields of a batch header compaction writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeaderFields {
    base_offset: u64,
    leader_epoch: u32,
    attributes: u16,
    last_offset_delta: u32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    record_count: u32,
}

impl HeaderFields {
    /// The batch: this header (with its length and CRC) and `section` after it.
    fn encode(&self, section: &[u8]) -> Vec<u8> {
        let total = BATCH_HEADER_BYTES + section.len();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&((total - sluice_protocol::LOG_OVERHEAD) as u32).to_be_bytes());
        out.extend_from_slice(&self.leader_epoch.to_be_bytes());
        out.push(sluice_protocol::FORMAT_VERSION);
        out.extend_from_slice(&[0; 4]); // CRC, below
        out.extend_from_slice(&self.attributes.to_be_bytes());
        out.extend_from_slice(&self.last_offset_delta.to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.record_count.to_be_bytes());
        out.extend_from_slice(section);
        let crc = compute_crc(&out);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

/// An empty batch being extended over consecutive emptied batches.
#[derive(Debug, Clone)]
struct PendingEmpty {
    base_offset: u64,
    next_offset: u64,
    leader_epoch: u32,
    timestamp_type: u16,
    max_timestamp: i64,
    /// The stored bytes when this is one batch that was already empty: re-emitting identical
    /// bytes is no change.
    original: Option<Vec<u8>>,
}

impl PendingEmpty {
    fn encode(&self) -> Vec<u8> {
        HeaderFields {
            base_offset: self.base_offset,
            leader_epoch: self.leader_epoch,
            attributes: self.timestamp_type,
            last_offset_delta: (self.next_offset - self.base_offset - 1) as u32,
            base_timestamp: self.max_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            record_count: 0,
        }
        .encode(&[])
    }
}

/// The empty batch a producer's last batch becomes when its records go: its header as it was
/// (producer fields, offsets, epoch), no records, no codec.
fn producer_empty(header: &BatchHeader) -> Vec<u8> {
    HeaderFields {
        base_offset: header.base_offset,
        leader_epoch: header.leader_epoch,
        attributes: header.attributes & !(ATTR_COMPRESSION_MASK | ATTR_DELETE_HORIZON),
        last_offset_delta: header.last_offset_delta,
        base_timestamp: header.max_timestamp,
        max_timestamp: header.max_timestamp,
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        base_sequence: header.base_sequence,
        record_count: 0,
    }
    .encode(&[])
}

/// Totals of a cleaning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanTotals {
    pub batches_in: u64,
    pub batches_out: u64,
    pub bytes_in: u64,
    pub records_removed: u64,
    /// The earliest delete horizon of the tombstones kept, if any.
    pub tombstone_horizon_min: Option<i64>,
    /// Whether the output differs from the input at all.
    pub rewritten: bool,
}

/// Builds a cleaned segment from the batches of one or more consecutive segments, in offset
/// order: each batch is cleaned, emptied batches merge, and the output is handed out in pieces
/// ([`CleanedSegment::take_output`]) with its index built alongside.
#[derive(Debug)]
pub struct CleanedSegment {
    index: SegmentIndex,
    output: Vec<u8>,
    pending: Option<PendingEmpty>,
    totals: CleanTotals,
}

impl CleanedSegment {
    pub fn new(base_offset: u64, index_interval_bytes: u32) -> CleanedSegment {
        CleanedSegment {
            index: SegmentIndex::new(base_offset, index_interval_bytes),
            output: Vec::new(),
            pending: None,
            totals: CleanTotals::default(),
        }
    }

    /// The next offset the segment expects.
    pub fn next_offset(&self) -> u64 {
        self.pending
            .as_ref()
            .map_or(self.index.next_offset(), |p| p.next_offset)
    }

    /// Bytes waiting in [`CleanedSegment::take_output`].
    pub fn output_len(&self) -> usize {
        self.output.len()
    }

    /// Bytes of the segment so far (a pending empty batch not counted).
    pub fn size_bytes(&self) -> u64 {
        self.index.size_bytes()
    }

    /// Cleans one stored batch (whole, CRC checked by the caller) and adds what remains.
    pub fn push(
        &mut self,
        header: &BatchHeader,
        batch: &[u8],
        map: &OffsetMap,
        producers: &ProducerLasts,
        clock: CleanClock,
    ) {
        assert_eq!(
            header.base_offset,
            self.next_offset(),
            "cleaned batches must continue the offset sequence"
        );
        self.totals.batches_in += 1;
        self.totals.bytes_in += u64::from(header.batch_len);
        let (cleaned, stats) = clean_batch(header, batch, map, clock);
        self.totals.records_removed += stats.records_removed;
        if let Some(h) = stats.tombstone_horizon {
            self.totals.tombstone_horizon_min =
                Some(self.totals.tombstone_horizon_min.map_or(h, |m| m.min(h)));
        }
        match cleaned {
            Cleaned::Unchanged => self.emit(batch),
            Cleaned::Rebuilt(bytes) => {
                self.totals.rewritten = true;
                self.emit(&bytes);
            }
            Cleaned::Emptied if producers.keeps_header(header) => {
                let bytes = producer_empty(header);
                self.totals.rewritten |= bytes != batch;
                self.emit(&bytes);
            }
            Cleaned::Emptied => self.extend_empty(header, batch),
        }
    }

    fn extend_empty(&mut self, header: &BatchHeader, batch: &[u8]) {
        if let Some(pending) = &mut self.pending {
            let span = header.next_offset() - pending.base_offset;
            if pending.leader_epoch == header.leader_epoch && span <= i32::MAX as u64 {
                pending.next_offset = header.next_offset();
                pending.max_timestamp = pending.max_timestamp.max(header.max_timestamp);
                pending.original = None;
                return;
            }
            self.flush_pending();
        }
        self.pending = Some(PendingEmpty {
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
            leader_epoch: header.leader_epoch,
            timestamp_type: header.attributes & ATTR_TIMESTAMP_LOG_APPEND,
            max_timestamp: header.max_timestamp,
            original: (header.record_count == 0).then(|| batch.to_vec()),
        });
    }

    fn flush_pending(&mut self) {
        if let Some(pending) = self.pending.take() {
            let bytes = pending.encode();
            self.totals.rewritten |= pending.original.as_deref() != Some(bytes.as_slice());
            self.append(&bytes);
        }
    }

    fn emit(&mut self, batch: &[u8]) {
        self.flush_pending();
        self.append(batch);
    }

    fn append(&mut self, batch: &[u8]) {
        let header = match BatchHeader::parse(batch) {
            Ok(header) => header,
            Err(error) => panic!("a cleaned batch does not parse: {error}"),
        };
        assert_eq!(
            header.batch_len as usize,
            batch.len(),
            "a cleaned batch is exactly one batch"
        );
        assert_eq!(
            header.crc,
            compute_crc(batch),
            "a cleaned batch carries its CRC"
        );
        self.index.observe(self.index.size_bytes(), &header);
        self.output.extend_from_slice(batch);
        self.totals.batches_out += 1;
    }

    /// The cleaned bytes produced since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Ends the segment (writing a pending empty batch) and returns its index and totals; the
    /// last output must still be taken.
    pub fn finish(&mut self) -> (SegmentIndex, CleanTotals) {
        self.flush_pending();
        (self.index.clone(), self.totals)
    }
}

/// Decompresses a records section as Kafka's clients frame it, refusing output larger than
/// `bytes_max`. Snappy (Kafka's xerial framing) is not supported broker-side.
pub fn decompress(codec: Compression, section: &[u8], bytes_max: usize) -> Result<Vec<u8>, String> {
    fn bounded(codec: &str, reader: impl Read, bytes_max: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        reader
            .take(bytes_max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("{codec}: {e}"))?;
        if out.len() > bytes_max {
            return Err(format!("{codec} section inflates past {bytes_max} bytes"));
        }
        Ok(out)
    }
    match codec {
        Compression::None => Ok(section.to_vec()),
        Compression::Lz4 => bounded(
            "lz4",
            lz4_flex::frame::FrameDecoder::new(section),
            bytes_max,
        ),
        Compression::Zstd => {
            zstd::bulk::decompress(section, bytes_max).map_err(|e| format!("zstd: {e}"))
        }
        Compression::Gzip => bounded("gzip", flate2::read::GzDecoder::new(section), bytes_max),
        Compression::Snappy => Err("snappy is not supported broker-side".into()),
    }
}

/// Compresses a records section as Kafka's clients frame it (lz4: one frame of independent
/// 64 KiB blocks; zstd: one frame, level 3; gzip: one stream, default level).
pub fn compress(codec: Compression, records: &[u8]) -> Result<Vec<u8>, String> {
    match codec {
        Compression::None => Ok(records.to_vec()),
        Compression::Lz4 => {
            use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
            let info = FrameInfo::new()
                .block_size(BlockSize::Max64KB)
                .block_mode(BlockMode::Independent);
            let mut encoder = FrameEncoder::with_frame_info(info, Vec::new());
            encoder.write_all(records).map_err(|e| e.to_string())?;
            encoder.finish().map_err(|e| e.to_string())
        }
        Compression::Zstd => zstd::bulk::compress(records, 3).map_err(|e| e.to_string()),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(records).map_err(|e| e.to_string())?;
            encoder.finish().map_err(|e| e.to_string())
        }
        Compression::Snappy => Err("snappy is not supported broker-side".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_protocol::batch::{stamp, update_crc};
    use sluice_protocol::{with_compressed_records, BatchBuilder, BatchIter, BatchOptions};
    use std::collections::BTreeMap;

    /// One generated batch: records as (key index or none, value or tombstone), its producer,
    /// whether it is a control batch, its codec.
    #[derive(Debug, Clone)]
    struct Spec {
        records: Vec<(Option<u8>, Option<u8>)>,
        producer: Option<i64>,
        control: bool,
        codec: Compression,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            proptest::collection::vec(
                (
                    proptest::option::weighted(0.97, 0u8..12),
                    proptest::option::weighted(0.8, any::<u8>()),
                ),
                1..6,
            ),
            proptest::option::weighted(0.3, 1i64..4),
            proptest::bool::weighted(0.05),
            prop_oneof![
                6 => Just(Compression::None),
                1 => Just(Compression::Lz4),
                1 => Just(Compression::Zstd),
                1 => Just(Compression::Gzip),
            ],
        )
            .prop_map(|(records, producer, control, codec)| Spec {
                records,
                producer,
                control,
                codec,
            })
    }

    const TS: i64 = 1_000_000;

    /// The specs as stored batches: offsets stamped from 0, epochs rising every 7 batches.
    fn build(specs: &[Spec]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut next = 0u64;
        let mut sequences: HashMap<i64, i32> = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let options = match spec.producer {
                Some(id) => {
                    let seq = sequences.entry(id).or_insert(0);
                    let options = BatchOptions {
                        producer_id: id,
                        producer_epoch: 0,
                        base_sequence: *seq,
                    };
                    *seq += spec.records.len() as i32;
                    options
                }
                None => BatchOptions::default(),
            };
            let mut builder = BatchBuilder::new(options);
            for (r, (key, value)) in spec.records.iter().enumerate() {
                let key = key.map(|k| format!("key-{k}").into_bytes());
                let value = value.map(|v| vec![v; 1 + usize::from(v % 7)]);
                builder.push(
                    TS + (i * 10 + r) as i64 * 3 % 17,
                    key.as_deref(),
                    value.as_deref(),
                    &[(b"h", Some(b"v"))],
                );
            }
            let mut batch = builder.finish();
            if spec.control {
                batch[21..23].copy_from_slice(&ATTR_CONTROL.to_be_bytes());
                update_crc(&mut batch);
            }
            if spec.codec != Compression::None {
                let section = compress(spec.codec, &batch[BATCH_HEADER_BYTES..]).unwrap();
                batch = with_compressed_records(&batch, spec.codec, &section);
            }
            stamp(&mut batch, next, (i / 7) as u32);
            next += spec.records.len() as u64;
            out.push(batch);
        }
        out
    }

    /// (offset, key, value, timestamp) of every record in `bytes`, and whether each batch is
    /// valid and continues the offset sequence from `from`.
    type Flat = (u64, Option<Vec<u8>>, Option<Vec<u8>>, i64);

    fn flatten(bytes: &[u8], from: u64) -> (Vec<Flat>, u64, Vec<BatchHeader>) {
        let mut records = Vec::new();
        let mut next = from;
        let mut headers = Vec::new();
        for item in BatchIter::new(bytes) {
            let (header, batch) = item.expect("every batch passes validation");
            assert_eq!(header.base_offset, next, "no offset gaps");
            assert!(
                header.record_count == 0 || header.last_offset_delta >= header.record_count - 1
            );
            let section = records_section(&header, batch).expect("readable");
            for record in RecordIter::new(&header, &section) {
                let record = record.expect("records decode");
                let offset = header.base_offset + u64::from(record.offset_delta);
                assert!(offset < header.next_offset());
                records.push((
                    offset,
                    record.key.map(<[u8]>::to_vec),
                    record.value.map(<[u8]>::to_vec),
                    record.timestamp,
                ));
            }
            next = header.next_offset();
            headers.push(header);
        }
        (records, next, headers)
    }

    fn clean(
        sealed: &[Vec<u8>],
        active: &[Vec<u8>],
        now_ms: i64,
        keys_max: usize,
    ) -> (Vec<u8>, CleanTotals) {
        let mut map = OffsetMap::new(keys_max);
        let mut producers = ProducerLasts::default();
        for batch in sealed.iter().chain(active) {
            let header = BatchHeader::parse(batch).unwrap();
            producers.observe(&header);
            assert!(map_batch(&mut map, &header, batch));
        }
        let base = BatchHeader::parse(&sealed[0]).unwrap().base_offset;
        let mut segment = CleanedSegment::new(base, 256);
        let clock = CleanClock {
            now_ms,
            delete_retention_ms: 100,
        };
        let mut out = Vec::new();
        for batch in sealed {
            let header = BatchHeader::parse(batch).unwrap();
            segment.push(&header, batch, &map, &producers, clock);
            out.extend(segment.take_output());
        }
        let (index, totals) = segment.finish();
        out.extend(segment.take_output());
        assert_eq!(index.size_bytes(), out.len() as u64);
        (out, totals)
    }

    fn split_batches(bytes: &[u8]) -> Vec<Vec<u8>> {
        BatchIter::new(bytes)
            .map(|item| item.unwrap().1.to_vec())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// After cleaning, the sealed part plus the active part read back as exactly the latest
        /// record of every key (and keyless and control records) in offset order, with every
        /// active record; offsets strictly increase with no gaps; every batch validates; each
        /// producer's last batch keeps its header; empty batches never sit side by side; and
        /// tombstones go once their horizon passes.
        #[test]
        fn cleaning_keeps_the_latest_record_per_key(
            specs in proptest::collection::vec(spec(), 1..60),
            split: prop::sample::Index,
        ) {
            let batches = build(&specs);
            let split = 1 + split.index(batches.len());
            let (sealed, active) = batches.split_at(split.min(batches.len()));
            let sealed_bytes: Vec<u8> = sealed.concat();
            let active_bytes: Vec<u8> = active.concat();
            let (all_records, sealed_end, _) = flatten(&sealed_bytes, 0);
            let (active_records, _, _) = flatten(&active_bytes, sealed_end);
            let control_offsets: Vec<u64> = batches
                .iter()
                .filter(|b| BatchHeader::parse(b).unwrap().is_control())
                .flat_map(|b| {
                    let h = BatchHeader::parse(b).unwrap();
                    h.base_offset..h.next_offset()
                })
                .collect();
            let mut latest: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            for (offset, key, _, _) in all_records.iter().chain(&active_records) {
                if let (Some(key), false) = (key, control_offsets.contains(offset)) {
                    latest.insert(key.clone(), *offset);
                }
            }
            let keep = |r: &Flat, tombstones: bool| {
                control_offsets.contains(&r.0)
                    || match &r.1 {
                        None => true,
                        Some(key) => latest[key] == r.0 && (tombstones || r.2.is_some()),
                    }
            };

            // First pass: older copies go, tombstones stay (their horizon is stamped).
            let (cleaned, totals) = clean(sealed, active, TS, usize::MAX);
            let (records, end, headers) = flatten(&cleaned, 0);
            prop_assert_eq!(end, sealed_end, "the cleaned part spans the same offsets");
            let expected: Vec<Flat> =
                all_records.iter().filter(|r| keep(r, true)).cloned().collect();
            prop_assert_eq!(&records, &expected);
            prop_assert_eq!(totals.records_removed as usize, all_records.len() - expected.len());
            prop_assert!(records.windows(2).all(|w| w[0].0 < w[1].0));
            for pair in headers.windows(2) {
                let plain_empty = |h: &BatchHeader| h.record_count == 0 && h.producer_id < 0;
                prop_assert!(
                    !(plain_empty(&pair[0]) && plain_empty(&pair[1])
                        && pair[0].leader_epoch == pair[1].leader_epoch),
                    "adjacent empty batches of one epoch are merged"
                );
            }
            // Every producer's last batch (over the whole log) keeps its header.
            let mut last: HashMap<i64, BatchHeader> = HashMap::new();
            for batch in sealed.iter().chain(active) {
                let h = BatchHeader::parse(batch).unwrap();
                if h.producer_id >= 0 {
                    last.insert(h.producer_id, h);
                }
            }
            for h in last.values().filter(|h| h.base_offset < sealed_end) {
                prop_assert!(headers.iter().any(|o| o.base_offset == h.base_offset
                    && o.producer_id == h.producer_id
                    && o.producer_epoch == h.producer_epoch
                    && o.base_sequence == h.base_sequence
                    && o.last_offset_delta == h.last_offset_delta));
            }
            // Compressed batches that kept records keep their codec.
            for h in &headers {
                if h.record_count > 0 {
                    let original = sealed.iter()
                        .map(|b| BatchHeader::parse(b).unwrap())
                        .find(|o| o.base_offset == h.base_offset)
                        .expect("a batch with records was a batch before");
                    prop_assert_eq!(original.compression(), h.compression());
                }
            }

            // A second pass at the same time changes nothing.
            let again = split_batches(&cleaned);
            let (same, totals) = clean(&again, active, TS, usize::MAX);
            prop_assert!(!totals.rewritten);
            prop_assert_eq!(&same, &cleaned);

            // Past the horizon, tombstones go too.
            let (final_bytes, _) = clean(&again, active, TS + 100, usize::MAX);
            let (records, end, _) = flatten(&final_bytes, 0);
            prop_assert_eq!(end, sealed_end);
            let expected: Vec<Flat> =
                all_records.iter().filter(|r| keep(r, false)).cloned().collect();
            prop_assert_eq!(records, expected);
        }
    }

    fn keyed(key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
        let mut builder = BatchBuilder::new(BatchOptions::default());
        builder.push(TS, key, value, &[]);
        builder.push(TS + 1, Some(b"other"), Some(b"x"), &[]);
        builder.finish()
    }

    #[test]
    fn keyless_records_are_found_for_compacted_logs() {
        let batch = keyed(None, Some(b"v"));
        let header = BatchHeader::parse(&batch).unwrap();
        assert_eq!(check_keys(&header, &batch), Err(0));
        let section = compress(Compression::Zstd, &batch[BATCH_HEADER_BYTES..]).unwrap();
        let compressed = with_compressed_records(&batch, Compression::Zstd, &section);
        let header = BatchHeader::parse(&compressed).unwrap();
        assert_eq!(check_keys(&header, &compressed), Err(0));
        let batch = keyed(Some(b"k"), None);
        let header = BatchHeader::parse(&batch).unwrap();
        assert_eq!(check_keys(&header, &batch), Ok(()));
    }

    #[test]
    fn the_offset_map_is_bounded() {
        let mut map = OffsetMap::new(2);
        assert!(map.put(b"a", 1));
        assert!(map.put(b"b", 2));
        assert!(map.put(b"a", 3), "a known key still updates");
        assert!(!map.put(b"c", 4), "a new key does not fit");
        assert_eq!(map.latest(b"a"), Some(3));
        assert_eq!(map.latest(b"c"), None);
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn snappy_batches_are_kept_whole() {
        let batch = keyed(Some(b"k"), Some(b"v"));
        let mut snappy = with_compressed_records(&batch, Compression::Snappy, b"not decodable");
        stamp(&mut snappy, 0, 0);
        let header = BatchHeader::parse(&snappy).unwrap();
        let mut map = OffsetMap::new(10);
        assert!(map.put(b"k", 99));
        let clock = CleanClock {
            now_ms: TS,
            delete_retention_ms: 0,
        };
        assert_eq!(
            clean_batch(&header, &snappy, &map, clock).0,
            Cleaned::Unchanged
        );
        assert!(map_batch(&mut map, &header, &snappy));
        assert_eq!(map.latest(b"other"), None, "its keys are not seen");
    }

    #[test]
    fn a_tombstone_gets_a_delete_horizon_and_keeps_its_timestamp() {
        let mut batch = keyed(Some(b"k"), None);
        stamp(&mut batch, 10, 1);
        let header = BatchHeader::parse(&batch).unwrap();
        let mut map = OffsetMap::new(10);
        assert!(map.put(b"k", 10));
        assert!(map.put(b"other", 50));
        let clock = CleanClock {
            now_ms: 5_000,
            delete_retention_ms: 1_000,
        };
        let (cleaned, stats) = clean_batch(&header, &batch, &map, clock);
        let Cleaned::Rebuilt(bytes) = cleaned else {
            panic!("expected a rebuilt batch, got {cleaned:?}");
        };
        assert_eq!(stats.records_removed, 1);
        assert_eq!(stats.tombstone_horizon, Some(6_000));
        let rebuilt = sluice_protocol::batch::validate_frame(&bytes).unwrap();
        assert_eq!(
            rebuilt.attributes & ATTR_DELETE_HORIZON,
            ATTR_DELETE_HORIZON
        );
        assert_eq!(rebuilt.first_timestamp, 6_000);
        assert_eq!(rebuilt.max_timestamp, TS);
        assert_eq!((rebuilt.base_offset, rebuilt.last_offset_delta), (10, 1));
        assert_eq!(rebuilt.leader_epoch, 1);
        let records: Vec<_> = RecordIter::new(&rebuilt, &bytes[BATCH_HEADER_BYTES..])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].timestamp, records[0].key),
            (TS, Some(&b"k"[..]))
        );
        // Before the horizon it stays; at it, it goes.
        let (again, _) = clean_batch(&rebuilt, &bytes, &map, clock);
        assert_eq!(again, Cleaned::Unchanged);
        let later = CleanClock {
            now_ms: 6_000,
            ..clock
        };
        assert_eq!(
            clean_batch(&rebuilt, &bytes, &map, later).0,
            Cleaned::Emptied
        );
    }
}
